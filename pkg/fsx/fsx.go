// Package fsx reads result files whether or not they were compressed at rest. Once a cell
// has ended, moecapd compresses the large files of its own that no other program reads any
// more (cell.Compact: the pass records, the per-request bench file) with zstd, as NAME.zst
// beside where NAME was; every reader opens them through ReadFile or Open here, so the
// report, the CAP derivation and the tools read both forms the same way. `zstd -d NAME.zst`
// (or `zstdcat`) gives the original bytes back.
package fsx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// ZstdExt is the suffix of a file compressed at rest.
const ZstdExt = ".zst"

// Base is name without ZstdExt: the name a reader matches on (".jsonl", "bench_*.json").
func Base(name string) string { return strings.TrimSuffix(name, ZstdExt) }

// ReadFile reads path: a path ending in ZstdExt is decompressed; otherwise path itself, or,
// when it does not exist, path+ZstdExt decompressed. A missing file is an error that
// errors.Is(err, fs.ErrNotExist) and names path.
func ReadFile(path string) ([]byte, error) {
	rc, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// Open opens path as ReadFile reads it.
func Open(path string) (io.ReadCloser, error) {
	if strings.HasSuffix(path, ZstdExt) {
		return openZstd(path)
	}
	f, err := os.Open(path)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	rc, zerr := openZstd(path + ZstdExt)
	if zerr != nil {
		if errors.Is(zerr, fs.ErrNotExist) {
			return nil, err // the plain name's error: the file a person looks for
		}
		return nil, zerr
	}
	return rc, nil
}

// Exists reports whether path exists in either form.
func Exists(path string) bool {
	if _, err := os.Stat(path); err == nil {
		return true
	}
	_, err := os.Stat(path + ZstdExt)
	return err == nil
}

type zstdFile struct {
	f *os.File
	d *zstd.Decoder
}

func (z *zstdFile) Read(p []byte) (int, error) { return z.d.Read(p) }
func (z *zstdFile) Close() error {
	z.d.Close()
	return z.f.Close()
}

func openZstd(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	d, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &zstdFile{f: f, d: d}, nil
}

// Compress replaces path by path+ZstdExt holding its bytes compressed: written to a temp
// file, synced and renamed into place, then checked by decompressing it and comparing, and
// only then path removed. A crash at any point leaves path, or both (readers take path
// first), never neither. A path that is already gone but compressed is no error.
func Compress(path string) error {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, zerr := os.Stat(path + ZstdExt); zerr == nil {
			return nil
		}
	}
	if err != nil {
		return err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	z := enc.EncodeAll(raw, make([]byte, 0, len(raw)/8))
	enc.Close()
	dst := path + ZstdExt
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(z); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if st, err := os.Stat(path); err == nil {
		_ = os.Chmod(tmp.Name(), st.Mode().Perm())
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	back, err := ReadFile(dst)
	if err != nil || !bytes.Equal(back, raw) {
		os.Remove(dst)
		if err == nil {
			err = errors.New("decompressed bytes differ from the original")
		}
		return fmt.Errorf("compress %s: check failed, kept the original: %w", path, err)
	}
	return os.Remove(path)
}
