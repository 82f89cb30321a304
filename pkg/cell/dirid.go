package cell

import (
	"fmt"
	"os"
	"syscall"
)

// dirIdentity names a directory by device and inode: a directory deleted and recreated
// under the same path is another one.
type dirIdentity struct {
	dev, ino uint64
	ok       bool
}

func identityOf(dir string) (dirIdentity, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return dirIdentity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return dirIdentity{}, fmt.Errorf("%s: no inode", dir)
	}
	return dirIdentity{dev: uint64(st.Dev), ino: st.Ino, ok: true}, nil
}

// changed says why dir is no longer the directory the cell started in ("" when it is):
// gone, or replaced (another inode), so its logs and results are not there.
func (d dirIdentity) changed(dir string) string {
	if !d.ok {
		return ""
	}
	now, err := identityOf(dir)
	switch {
	case err != nil:
		return fmt.Sprintf("the cell directory %s disappeared during the run (%v): its logs and results are gone; the cell is not ok", dir, err)
	case now.dev != d.dev || now.ino != d.ino:
		return fmt.Sprintf("the cell directory %s was deleted and recreated during the run: its logs and results are gone; the cell is not ok", dir)
	}
	return ""
}
