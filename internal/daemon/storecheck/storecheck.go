// Package storecheck checks a bbolt database file before bbolt maps it: bbolt follows the
// page numbers of its file without checking them against the file's length, so a file cut
// short or overwritten kills the process (SIGBUS, SIGSEGV) or panics it before any error can
// be returned. File walks the pages as bbolt will, reading them, and returns an error
// instead. The daemon's store (internal/daemon) opens its state.db only after File.
package storecheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
)

// bbolt's on-disk meta page (go.etcd.io/bbolt internal/common/meta.go): after the 16-byte
// page header, magic, version, page size, flags (uint32 each), the root bucket (root page,
// sequence), the freelist page, the high-water mark (pages in use), the txid (uint64 each),
// then an FNV-64a checksum of everything before it. Written in the host's byte order
// (little-endian on every platform moecapd runs on).
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16
	boltMetaSumBytes = 56 // bytes of the meta the checksum covers
	boltMetaBytes    = boltMetaSumBytes + 8
	boltNoFreelist   = ^uint64(0)
)

type boltMeta struct {
	pageSize                 uint32
	root, freelist, pgid, tx uint64
}

// readBoltMeta reads the meta page at off; ok is false when it is not a valid one (short,
// wrong magic or version, bad checksum).
func readBoltMeta(f io.ReaderAt, off int64) (boltMeta, bool) {
	var b [boltPageHeader + boltMetaBytes]byte
	if n, _ := f.ReadAt(b[:], off); n < len(b) {
		return boltMeta{}, false
	}
	m := b[boltPageHeader:]
	le := binary.LittleEndian
	h := fnv.New64a()
	_, _ = h.Write(m[:boltMetaSumBytes])
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion || le.Uint64(m[boltMetaSumBytes:]) != h.Sum64() {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]),
		pgid: le.Uint64(m[40:]), tx: le.Uint64(m[48:])}, true
}

// File refuses a store file that bbolt cannot open safely. bbolt maps the file
// and follows the page numbers its meta page names without checking them against the
// file's length: a store cut short (a full disk during a copy or restore, a crash on a
// file system that lost the tail) kills the daemon with SIGBUS or a panic before any error
// can be returned. So the meta page bbolt will use (the valid one with the higher txid) must
// name a root and a freelist below its high-water mark, and the file must hold every page
// up to that mark. A missing or empty file is fine: bbolt creates the store in it.
func File(p string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("the daemon's store %s: %w", p, err)
	case fi.IsDir():
		return fmt.Errorf("the daemon's store %s is a directory, not a database file; move it aside (the daemon then starts with an empty queue)", p)
	case fi.Size() == 0:
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("the daemon's store %s: %w", p, err)
	}
	defer f.Close()
	corrupt := func(why string, a ...any) error {
		return fmt.Errorf("the daemon's store %s is corrupt (%s); move it aside (the daemon then starts with an empty queue; the cells' results under the root are kept)", p, fmt.Sprintf(why, a...))
	}
	m0, ok0 := readBoltMeta(f, 0)
	ps := int64(m0.pageSize)
	if !ok0 {
		// bbolt then looks for the second meta page at each page size it supports.
		for i := range 15 {
			if m, ok := readBoltMeta(f, 1024<<i); ok && int64(m.pageSize) == 1024<<i {
				ps = int64(m.pageSize)
				break
			}
		}
	}
	if ps < 1024 || ps > 1<<24 || ps&(ps-1) != 0 {
		return corrupt("neither meta page is valid: not a bbolt database, or its first pages were overwritten")
	}
	m1, ok1 := readBoltMeta(f, ps)
	m := m0
	if !ok0 || (ok1 && m1.tx > m0.tx) {
		m = m1
	}
	if !ok0 && !ok1 {
		return corrupt("neither meta page is valid")
	}
	switch {
	case m.pgid < 3:
		return corrupt("its meta page names %d pages", m.pgid)
	case m.pgid > uint64(fi.Size())/uint64(ps):
		return corrupt("%d bytes, its meta page names %d pages of %d bytes: the file was cut short", fi.Size(), m.pgid, ps)
	case m.root < 2 || m.root >= m.pgid:
		return corrupt("its root page %d is outside pages 2..%d", m.root, m.pgid-1)
	case m.freelist != boltNoFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return corrupt("its freelist page %d is outside pages 2..%d", m.freelist, m.pgid-1)
	}
	w := &boltWalk{f: f, ps: ps, hwm: m.pgid, seen: map[uint64]bool{}}
	if m.freelist != boltNoFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return corrupt("%v", err)
		}
	}
	if err := w.tree(m.root, 0); err != nil {
		return corrupt("%v", err)
	}
	return nil
}

// bbolt's pages: a 16-byte header (id, flags, element count, overflow pages), then 16-byte
// elements whose keys and values lie at an offset from the element.
const (
	boltBranchPage   = 0x01
	boltLeafPage     = 0x02
	boltFreelistPage = 0x10
	boltBucketLeaf   = 0x01
	boltElemBytes    = 16
	boltMaxDepth     = 64
)

// boltWalk walks the store's pages as bbolt will, reading the file (never mapping it) and
// checking every page number, element and key/value extent before it is followed: what
// bbolt would follow into unmapped memory (SIGSEGV, SIGBUS) or trip an assertion on (a
// panic) is an error here instead.
type boltWalk struct {
	f    io.ReaderAt
	ps   int64
	hwm  uint64
	seen map[uint64]bool
}

// page reads page id with its overflow pages.
func (w *boltWalk) page(id uint64, want uint16) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, fmt.Errorf("page %d is outside pages 2..%d", id, w.hwm-1)
	}
	if w.seen[id] {
		return nil, fmt.Errorf("page %d is reached twice", id)
	}
	w.seen[id] = true
	var h [boltPageHeader]byte
	if _, err := w.f.ReadAt(h[:], int64(id)*w.ps); err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	flags, over := binary.LittleEndian.Uint16(h[8:]), uint64(binary.LittleEndian.Uint32(h[12:]))
	if flags&want == 0 {
		return nil, fmt.Errorf("page %d has type %#x, not %#x", id, flags, want)
	}
	if id+1+over > w.hwm {
		return nil, fmt.Errorf("page %d runs %d pages past the last page %d", id, over, w.hwm-1)
	}
	buf := make([]byte, int64(1+over)*w.ps)
	if _, err := w.f.ReadAt(buf, int64(id)*w.ps); err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	return buf, nil
}

func (w *boltWalk) freelist(id uint64) error {
	buf, err := w.page(id, boltFreelistPage)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	off, n := uint64(boltPageHeader), uint64(le.Uint16(buf[10:]))
	if n == 0xFFFF { // the real count is the first element
		n, off = le.Uint64(buf[off:]), off+8
	}
	if n > (uint64(len(buf))-off)/8 {
		return fmt.Errorf("freelist page %d lists %d pages, more than it holds", id, n)
	}
	for i := range n {
		if p := le.Uint64(buf[off+8*i:]); p < 2 || p >= w.hwm {
			return fmt.Errorf("freelist page %d lists page %d, outside pages 2..%d", id, p, w.hwm-1)
		}
	}
	return nil
}

func (w *boltWalk) tree(id uint64, depth int) error {
	buf, err := w.page(id, boltBranchPage|boltLeafPage)
	if err != nil {
		return err
	}
	return w.node(buf, id, depth)
}

// node checks one branch or leaf page (buf: the page with its overflow, or an inline
// bucket's page inside its value) and follows its children and sub-buckets.
func (w *boltWalk) node(buf []byte, id uint64, depth int) error {
	if depth > boltMaxDepth {
		return fmt.Errorf("page %d: buckets or branches nested deeper than %d", id, boltMaxDepth)
	}
	if len(buf) < boltPageHeader {
		return fmt.Errorf("page %d: %d bytes, shorter than a page header", id, len(buf))
	}
	le := binary.LittleEndian
	flags, n := le.Uint16(buf[8:]), int(le.Uint16(buf[10:]))
	if boltPageHeader+n*boltElemBytes > len(buf) {
		return fmt.Errorf("page %d: %d elements do not fit in its %d bytes", id, n, len(buf))
	}
	// extent returns buf[e+pos : e+pos+size] when it lies inside the page.
	extent := func(e int, pos uint32, size uint64) ([]byte, bool) {
		lo := uint64(e) + uint64(pos)
		hi := lo + size
		if hi > uint64(len(buf)) {
			return nil, false
		}
		return buf[lo:hi], true
	}
	for i := range n {
		e := boltPageHeader + i*boltElemBytes
		el := buf[e : e+boltElemBytes]
		switch flags {
		case boltBranchPage:
			if _, ok := extent(e, le.Uint32(el[0:]), uint64(le.Uint32(el[4:]))); !ok {
				return fmt.Errorf("page %d: branch key %d lies outside the page", id, i)
			}
			if err := w.tree(le.Uint64(el[8:]), depth+1); err != nil {
				return err
			}
		case boltLeafPage:
			kv, ok := extent(e, le.Uint32(el[4:]), uint64(le.Uint32(el[8:]))+uint64(le.Uint32(el[12:])))
			if !ok {
				return fmt.Errorf("page %d: key/value %d lies outside the page", id, i)
			}
			if le.Uint32(el[0:])&boltBucketLeaf == 0 {
				continue
			}
			v := kv[le.Uint32(el[8:]):]
			if len(v) < 16 {
				return fmt.Errorf("page %d: bucket %d has a %d-byte header", id, i, len(v))
			}
			var err error
			if root := le.Uint64(v); root == 0 {
				err = w.node(v[16:], id, depth+1) // an inline bucket: its page is in the value
			} else {
				err = w.tree(root, depth+1)
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("page %d has type %#x, not a branch or leaf", id, flags)
		}
	}
	return nil
}
