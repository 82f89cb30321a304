package report

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/capmath"
)

// TestBelowFloorShowsFlagged: a ratio to a floor that capmath moved to errors (below its
// lower limit) shows as "flagged: tpot over floor 0.876 < 0.980: <cause>", and an S-MBU above
// its limit with ">".
func TestBelowFloorShowsFlagged(t *testing.T) {
	raw, _ := json.Marshal(capmath.Derived{Errors: []capmath.Flag{
		{Field: "tpot_over_floor", Value: 0.876, Limit: capmath.FloorLimit, Cause: "ran short"},
		{Field: "decode.s_mbu", Value: 1.2, Limit: capmath.PhysicalLimit, Cause: "too fast"},
	}})
	r := &Row{Flags: capFlags(raw)}
	if got := r.FlagFor("tpot_over_floor"); got != "tpot over floor 0.876 < 0.980: ran short" {
		t.Errorf("tpot flag %q", got)
	}
	if got := r.FlagFor("s_mbu_decode"); !strings.HasPrefix(got, "s mbu decode 1.20 > 1.01") {
		t.Errorf("s_mbu flag %q", got)
	}
	if got := flaggedText(r.FlagFor("tpot_over_floor")); !strings.HasPrefix(got, "flagged: ") {
		t.Errorf("shown as %q", got)
	}
}

// TestCSVFullPrecision: a CSV number reads back to the same float64 (DESIGN: full precision
// in the CSV), where six significant digits would not.
func TestCSVFullPrecision(t *testing.T) {
	for _, v := range []float64{0.1 + 0.2, 1.0 / 3, 12345.678901234, 7.8e-6} {
		got, err := strconv.ParseFloat(num(&v), 64)
		if err != nil || got != v {
			t.Errorf("num(%v) = %q reads back as %v", v, num(&v), got)
		}
	}
	if num(nil) != "" {
		t.Error("absent must be an empty field")
	}
}
