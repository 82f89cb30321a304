package sim

import (
	"reflect"
	"testing"

	"github.com/spf13/pflag"
)

// TestSplitServerArgs: known flags (with their values, -tp as vLLM's short form) are kept
// for parsing; unknown ones are set aside with the value argparse would give them, so the
// server can log each as ignored.
func TestSplitServerArgs(t *testing.T) {
	fs := pflag.NewFlagSet("sim-server", pflag.ContinueOnError)
	fs.Int("tensor-parallel-size", 1, "")
	fs.Int("port", 0, "")
	fs.Bool("enable-metrics", false, "")
	known, ignored := SplitServerArgs(fs, []string{
		"--port", "30000", "--mem-fraction-static", "0.8", "--trust-remote-code", "--", "-tp", "2",
		"--enable-metrics", "--max-loras=4", "--temperature", "-1", "stray",
	})
	wantKnown := []string{"--port", "30000", "--tensor-parallel-size", "2", "--enable-metrics"}
	wantIgnored := []string{"--mem-fraction-static 0.8", "--trust-remote-code", "--max-loras=4", "--temperature -1", "stray"}
	if !reflect.DeepEqual(known, wantKnown) || !reflect.DeepEqual(ignored, wantIgnored) {
		t.Errorf("known %q ignored %q\nwant %q and %q", known, ignored, wantKnown, wantIgnored)
	}
	if err := fs.Parse(known); err != nil {
		t.Fatal(err)
	}
	if tp, _ := fs.GetInt("tensor-parallel-size"); tp != 2 {
		t.Errorf("-tp 2 read as %d", tp)
	}
}
