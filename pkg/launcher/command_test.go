package launcher

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCommand(t *testing.T) {
	ctx := context.Background()
	t.Run("argv verbatim, output and exit code", func(t *testing.T) {
		// The arguments reach the program as they are: no shell between.
		o, err := Command(ctx, []string{"sh", "-c", `printf '%s|' "$@"; echo err >&2; exit 3`, "sh", "a b", "$HOME", "x;y"}, nil)
		if err != nil || o.Stdout != "a b|$HOME|x;y|" || o.Stderr != "err\n" || o.ExitCode != 3 {
			t.Errorf("got %+v, %v; want args verbatim, stderr err, exit 3", o, err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, err := Command(ctx, []string{"no-such-program-moecapd"}, nil)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("err %v; want ErrNotFound", err)
		}
	})
	t.Run("context ends it", func(t *testing.T) {
		c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := Command(c, []string{"sleep", "10"}, nil)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 5*time.Second {
			t.Errorf("err %v after %s; want the deadline, soon", err, time.Since(t0))
		}
	})
}
