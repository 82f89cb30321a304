package cell

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/records"
)

// TestCompactWhatAndReadBack: Compact compresses moecapd's own bulky files (which ones
// depends on who wrote them), leaves upstream and small files alone, and every reader reads
// the cell the same before and after.
func TestCompactWhatAndReadBack(t *testing.T) {
	pass, err := os.ReadFile("../records/testdata/pool_slots.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"records/" + records.WindowFile:                                                    pass,
		"records/Qwen/Qwen1.5-MoE-A2.7B-Chat/expert_distribution_record.jsonl":             pass,
		"client/.moecapd/bench_random_20260101_000000.json":                                []byte(`{"prompt_style":"exact-ids","requests":[]}`),
		"client/Qwen/Qwen1.5-MoE-A2.7B-Chat/detailed_results_random_20260101_000000.jsonl": pass,
		"client/Qwen/Qwen1.5-MoE-A2.7B-Chat/output_data_random_20260101_000000.jsonl":      []byte("{}\n"),
		"client/Qwen/Qwen1.5-MoE-A2.7B-Chat/metrics_random_20260101_000000.json":           []byte("{}"),
		"server.log": []byte("log\n"),
	}
	for _, c := range []struct {
		name string
		w    Writers
		want []string // compressed, relative to the cell
	}{
		{"real server, MoE-CAP runner", Writers{}, []string{
			"client/.moecapd/bench_random_20260101_000000.json",
			"records/" + records.WindowFile,
		}},
		{"sim server, native client", Writers{SimServer: true, NativeClient: true}, []string{
			"client/.moecapd/bench_random_20260101_000000.json",
			"client/Qwen/Qwen1.5-MoE-A2.7B-Chat/detailed_results_random_20260101_000000.jsonl",
			"records/Qwen/Qwen1.5-MoE-A2.7B-Chat/expert_distribution_record.jsonl",
			"records/" + records.WindowFile,
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := Dir{ID: "qwen1_5.1xH100.4k-1k.bs1.sim", Path: t.TempDir()}
			for rel, b := range files {
				p := filepath.Join(d.Path, rel)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before, err := records.ReadDir(d.Records())
			if err != nil {
				t.Fatal(err)
			}
			done, err := d.Compact(c.w)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range done {
				rel, _ := filepath.Rel(d.Path, p)
				got = append(got, filepath.ToSlash(rel))
			}
			slices.Sort(got)
			if !slices.Equal(got, c.want) {
				t.Errorf("compressed %q, want %q", got, c.want)
			}
			for rel := range files {
				_, plainErr := os.Stat(filepath.Join(d.Path, rel))
				_, zErr := os.Stat(filepath.Join(d.Path, rel) + fsx.ZstdExt)
				if compressed := slices.Contains(c.want, rel); compressed != (plainErr != nil && zErr == nil) {
					t.Errorf("%s: plain %v, .zst %v; want compressed=%v", rel, plainErr, zErr, compressed)
				}
			}
			after, err := records.ReadDir(d.Records())
			if err != nil {
				t.Fatal(err)
			}
			if len(after.Passes) == 0 || !reflect.DeepEqual(before.Passes, after.Passes) {
				t.Errorf("records.ReadDir after Compact: %d passes, before %d (want the same)", len(after.Passes), len(before.Passes))
			}
			bench := profile.FindBenchFile(d.Client())
			if !strings.HasSuffix(bench, ".json"+fsx.ZstdExt) {
				t.Fatalf("FindBenchFile after Compact: %q", bench)
			}
			if b, err := fsx.ReadFile(bench); err != nil || !strings.Contains(string(b), "exact-ids") {
				t.Errorf("bench file read back: %q, %v", b, err)
			}
			if again, err := d.Compact(c.w); err != nil || len(again) != 0 {
				t.Errorf("Compact again: %v, %v; want nothing to do", again, err)
			}
		})
	}
}

// TestPresentListsWhatExists: a cell page lists the files a cell has; telemetry.csv only
// where GPUs were sampled.
func TestPresentListsWhatExists(t *testing.T) {
	for _, c := range []struct {
		name  string
		files []string
		want  []string
	}{
		{"sim cell", []string{ManifestFile, BenchFile, ServerLogFile, ClientLogFile, "client/x", "records/y"},
			[]string{ManifestFile, BenchFile, ServerLogFile, ClientLogFile, "client/", "records/"}},
		{"GPU cell", []string{ManifestFile, TelemetryFile, "records/y"}, []string{ManifestFile, "records/", TelemetryFile}},
		{"empty", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := Dir{ID: "x", Path: t.TempDir()}
			for _, f := range c.files {
				p := filepath.Join(d.Path, f)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := d.Present(); !slices.Equal(got, c.want) {
				t.Errorf("Present() = %q, want %q", got, c.want)
			}
		})
	}
}
