package daemon

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// storeBytes is a small real store (three jobs of three cells, a lease), built once.
var storeBytes = sync.OnceValues(func() ([]byte, error) {
	dir, err := os.MkdirTemp("", "moecapd-store")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	st, err := OpenStore(dir)
	if err != nil {
		return nil, err
	}
	for i := range 3 {
		j := &Job{Owner: "alice", State: JobQueued, Created: time.Unix(1e9, 0), Spec: Spec{Matrix: "/m/matrix.yaml"}}
		var cs []*Cell
		for k := range 3 {
			cs = append(cs, &Cell{ID: fmt.Sprintf("qwen.1xH100.4k-1k.bs%d.sglang", 1<<k), Index: k, State: CellQueued, Reason: strings.Repeat("r", 40*i)})
		}
		if err := st.AddJob(j, cs); err != nil {
			return nil, err
		}
		if i == 0 {
			if err := st.Save(nil, nil, []*Lease{{Job: j.ID, Cell: cs[0].ID, GPUs: []string{"0"}, DaemonPID: 1}}, nil); err != nil {
				return nil, err
			}
		}
	}
	if err := st.Close(); err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dir, StoreDir, StoreFile))
})

// openStoreBytes writes b as a results root's store and opens and loads it.
func openStoreBytes(t *testing.T, b []byte) (open, load error) {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, StoreDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, StoreDir, StoreFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(root)
	if err != nil {
		return err, nil
	}
	defer st.Close()
	_, _, _, err = st.Load()
	return nil, err
}

// TestStoreCorrupt: a store cut short, overwritten with garbage, with a page number or an
// element pointing outside the file, or a directory in its place, is an error naming the
// file and the fix; bbolt would have died of SIGBUS/SIGSEGV (it maps the file and follows
// its page numbers unchecked) or panicked on each of them.
func TestStoreCorrupt(t *testing.T) {
	base, err := storeBytes()
	if err != nil {
		t.Fatal(err)
	}
	if open, load := openStoreBytes(t, base); open != nil || load != nil {
		t.Fatalf("the intact store: open %v, load %v", open, load)
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
		open, _ := openStoreBytes(t, tc.b)
		if open == nil || !strings.Contains(open.Error(), tc.want) || !strings.Contains(open.Error(), StoreFile) || !strings.Contains(open.Error(), "move it aside") {
			t.Errorf("%s: open: %v; want an error saying %q, naming %s and the fix", name, open, tc.want, StoreFile)
		}
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, StoreDir, StoreFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
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
		open, _ := openStoreBytes(t, b)
		if open != nil && !strings.Contains(open.Error(), StoreFile) {
			t.Fatalf("open error does not name the file: %v", open)
		}
	})
}
