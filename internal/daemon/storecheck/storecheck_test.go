package storecheck

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const storeFile = "state.db"

// storeBytes is a small bbolt file shaped as the daemon's store: its four buckets, a format
// key, three jobs of three cells as JSON, a lease; built once.
var storeBytes = sync.OnceValues(func() ([]byte, error) {
	dir, err := os.MkdirTemp("", "moecapd-store")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, storeFile)
	db, err := bolt.Open(p, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bs := map[string]*bolt.Bucket{}
		for _, n := range []string{"meta", "jobs", "cells", "leases"} {
			b, err := tx.CreateBucketIfNotExists([]byte(n))
			if err != nil {
				return err
			}
			bs[n] = b
		}
		if err := bs["meta"].Put([]byte("format"), []byte("1")); err != nil {
			return err
		}
		for i := range 3 {
			j, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("j%d", i+1), "owner": "alice", "state": "queued", "spec": map[string]any{"matrix": "/m/matrix.yaml"}})
			if err := bs["jobs"].Put(fmt.Appendf(nil, "j%d", i+1), j); err != nil {
				return err
			}
			for k := range 3 {
				id := fmt.Sprintf("qwen.1xH100.4k-1k.bs%d.sglang", 1<<k)
				c, _ := json.Marshal(map[string]any{"job": fmt.Sprintf("j%d", i+1), "id": id, "index": k, "state": "queued", "reason": strings.Repeat("r", 40*i)})
				if err := bs["cells"].Put(fmt.Appendf(nil, "j%d/%s", i+1, id), c); err != nil {
					return err
				}
			}
		}
		l, _ := json.Marshal(map[string]any{"job": "j1", "cell": "qwen.1xH100.4k-1k.bs1.sglang", "gpus": []string{"0"}, "daemon_pid": 1})
		return bs["leases"].Put([]byte("j1/qwen.1xH100.4k-1k.bs1.sglang"), l)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
})

// openBytes writes b as a store file, checks it, and when File accepts it, opens it with
// bbolt and reads every bucket as the daemon's Load does: a crash there is what File exists
// to prevent.
func openBytes(t *testing.T, b []byte) error {
	t.Helper()
	p := filepath.Join(t.TempDir(), storeFile)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := File(p); err != nil {
		return err
	}
	db, err := bolt.Open(p, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil // bbolt's own error: no crash
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				_ = json.Valid(v)
				return nil
			})
		})
	})
	return nil
}

// TestCorrupt: a store cut short, overwritten with garbage, with a page number or an
// element pointing outside the file, or a directory in its place, is an error naming the
// file and the fix; bbolt would have died of SIGBUS/SIGSEGV (it maps the file and follows
// its page numbers unchecked) or panicked on each of them.
func TestCorrupt(t *testing.T) {
	base, err := storeBytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := openBytes(t, base); err != nil {
		t.Fatalf("the intact store: %v", err)
	}
	// The meta bbolt uses (the valid one of the higher txid) and its root page.
	m0, _ := readBoltMeta(bytes.NewReader(base), 0)
	ps := int(m0.pageSize)
	m1, _ := readBoltMeta(bytes.NewReader(base), int64(ps))
	cur, curOff := m0, 0
	if m1.tx > m0.tx {
		cur, curOff = m1, ps
	}
	root := int(cur.root) * ps
	edit := func(off int, v ...byte) []byte {
		b := append([]byte(nil), base...)
		copy(b[off:], v)
		return b
	}
	// withMeta rewrites the current meta with f applied and its checksum made right.
	withMeta := func(f func(m []byte)) []byte {
		b := append([]byte(nil), base...)
		m := b[curOff+boltPageHeader : curOff+boltPageHeader+boltMetaBytes]
		f(m)
		h := fnv.New64a()
		h.Write(m[:boltMetaSumBytes])
		binary.LittleEndian.PutUint64(m[boltMetaSumBytes:], h.Sum64())
		return b
	}
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"cut short":             {base[:(int(cur.pgid)-1)*ps], "cut short"},
		"cut mid-page":          {base[:2*ps+100], "cut short"},
		"garbage":               {[]byte(strings.Repeat("not a database\n", 2000)), "neither meta page is valid"},
		"root past the end":     {withMeta(func(m []byte) { binary.LittleEndian.PutUint64(m[16:], cur.pgid+5) }), "root page"},
		"freelist past the end": {withMeta(func(m []byte) { binary.LittleEndian.PutUint64(m[32:], 1<<40) }), "freelist page"},
		// The root page's first element with its key offset far outside the page.
		"element outside": {edit(root+boltPageHeader+4, 0xff, 0xff, 0xff, 0x7f), "outside the page"},
		"page type":       {edit(root+8, 0x31), "has type 0x31"},
		"overflow":        {edit(root+12, 0xff, 0xff, 0, 0), "past the last page"},
	} {
		err := openBytes(t, tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), storeFile) || !strings.Contains(err.Error(), "move it aside") {
			t.Errorf("%s: %v; want an error saying %q, naming %s and the fix", name, err, tc.want, storeFile)
		}
	}
	dir := filepath.Join(t.TempDir(), storeFile)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := File(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("a directory in the store's place: %v", err)
	}
}

// FuzzStoreFile: the daemon's store with bytes overwritten or cut off opens and loads, or
// is an error; never a crash (SIGBUS, SIGSEGV, a bbolt panic).
func FuzzStoreFile(f *testing.F) {
	f.Add(uint32(0), []byte(nil), uint32(0))
	f.Add(uint32(16), []byte{0xff, 0xff}, uint32(0))
	f.Add(uint32(2*4096+16), []byte{0xff, 0xff, 0xff, 0x7f}, uint32(0))
	f.Add(uint32(3*4096+8), []byte{0x10}, uint32(0))
	f.Add(uint32(0), []byte(nil), uint32(5*4096+1))
	f.Fuzz(func(t *testing.T, off uint32, patch []byte, cut uint32) {
		base, err := storeBytes()
		if err != nil {
			t.Fatal(err)
		}
		b := append([]byte(nil), base...)
		if cut > 0 {
			b = b[:int(cut)%len(b)]
		}
		if len(b) > 0 {
			copy(b[int(off)%len(b):], patch)
		}
		if err := openBytes(t, b); err != nil && !strings.Contains(err.Error(), storeFile) {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}
