package exitcode

import (
	"errors"
	"fmt"
	"testing"
)

func TestOf(t *testing.T) {
	plain := errors.New("boom")
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, 0},
		{"unclassified is a bug", plain, 1},
		{"usage", Usagef("--x %d: bad", 3), 2},
		{"wrapped keeps its kind", fmt.Errorf("context: %w", New(Bench, plain)), 5},
		{"outermost kind wins", New(Interrupted, New(Bench, plain)), 130},
		{"joined: the first classified", errors.Join(plain, New(Teardown, plain)), 6},
		{"New of nil is nil", New(Usage, nil), 0},
		{"With takes a code", With(4, plain), 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Of(tc.err); got != tc.want {
				t.Errorf("Of(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
	if e := Usagef("--x %q", "y"); e.Error() != `--x "y"` {
		t.Errorf("message %q", e.Error())
	}
}
