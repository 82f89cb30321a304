package cell

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/records"
)

// Writers says who wrote a cell's large files, which decides what Compact may compress.
type Writers struct {
	// SimServer: the pass records under records/ came from moecapd's simulated server (in
	// the wrappers' formats), not from a real SGLang or vLLM with MoE-CAP.
	SimServer bool
	// NativeClient: the runner-format files under client/<org>/<model>/ came from moecapd's
	// own client, not from the MoE-CAP runner.
	NativeClient bool
}

// Compact compresses, once the cell has ended, the large files of moecapd's own that no
// other program reads any more (fsx.Compress: NAME becomes NAME.zst, zstd; every moecapd
// reader goes through fsx and reads both forms): the recording window file and the
// per-request bench file always; the other pass-record files under records/ when the sim
// wrote them; detailed_results_*.jsonl (the runner-format copy of the pass records) when
// the native client wrote it. Files a real server's MoE-CAP wrapper or the MoE-CAP runner
// wrote stay as they are, for upstream tools; so do the small ones a person reads
// (manifest, logs, metrics, output_data, telemetry.csv). It returns the files it
// compressed; an error leaves the file it was on, and every later one, uncompressed and
// still readable.
func (d Dir) Compact(w Writers) ([]string, error) {
	var done []string
	compress := func(p string) error {
		if strings.HasSuffix(p, fsx.ZstdExt) {
			return nil
		}
		if err := fsx.Compress(p); err != nil {
			return err
		}
		done = append(done, p)
		return nil
	}
	walk := func(root string, pick func(rel, name string) bool) error {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !e.Type().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			if pick(filepath.ToSlash(rel), e.Name()) {
				return compress(p)
			}
			return nil
		})
		return err
	}
	err := walk(d.Records(), func(rel, name string) bool {
		ext := filepath.Ext(name)
		return name == records.WindowFile || (w.SimServer && (ext == ".jsonl" || ext == ".json"))
	})
	if err != nil {
		return done, err
	}
	err = walk(d.Client(), func(rel, name string) bool {
		if strings.HasPrefix(rel, profile.BenchDir+"/") {
			return strings.HasPrefix(name, "bench_") && strings.HasSuffix(name, ".json")
		}
		return w.NativeClient && strings.HasPrefix(name, "detailed_results_") && strings.HasSuffix(name, ".jsonl")
	})
	return done, err
}
