package sim

import (
	"reflect"
	"testing"
)

// TestSplitServerArgs: known flags (with their values, -tp as vLLM's short form) are kept
// for parsing; unknown ones are set aside with the value argparse would give them, so the
// server can log each as ignored.
func TestSplitServerArgs(t *testing.T) {
	flags := map[string]bool{"tensor-parallel-size": false, "port": false, "enable-metrics": true} // name → boolean
	kind := func(name string, short bool) (bool, bool) {
		if short {
			return false, false
		}
		b, ok := flags[name]
		return ok, b
	}
	known, ignored := SplitServerArgs(kind, []string{
		"--port", "30000", "--mem-fraction-static", "0.8", "--trust-remote-code", "--", "-tp", "2",
		"--enable-metrics", "--max-loras=4", "--temperature", "-1", "stray",
	})
	wantKnown := []string{"--port", "30000", "--tensor-parallel-size", "2", "--enable-metrics"}
	wantIgnored := []string{"--mem-fraction-static 0.8", "--trust-remote-code", "--max-loras=4", "--temperature -1", "stray"}
	if !reflect.DeepEqual(known, wantKnown) || !reflect.DeepEqual(ignored, wantIgnored) {
		t.Errorf("known %q ignored %q\nwant %q and %q", known, ignored, wantKnown, wantIgnored)
	}
}
