package records

import "testing"

func TestPickLatency(t *testing.T) {
	c, s := 12.0, 30.0
	for _, tc := range []struct {
		client, server *float64
		want           *float64
		clock          string
	}{
		{&c, &s, &c, ClockClient},
		{nil, &s, &s, ClockServerPass},
		{&c, nil, &c, ClockClient},
		{nil, nil, nil, ""},
	} {
		got, clock := PickLatency(tc.client, tc.server)
		if got != tc.want || clock != tc.clock {
			t.Errorf("PickLatency(%v, %v) = %v %q, want %v %q", tc.client, tc.server, got, clock, tc.want, tc.clock)
		}
	}
}

// A request's prefill is the sum over the passes holding its chunks up to its last one; a
// request never finished is not averaged; passes without keys count once only when plain.
func TestPerRequestPrefill(t *testing.T) {
	type p struct {
		keys []string
		last []bool
		v    float64
	}
	passes := []p{
		{[]string{"a", "b"}, []bool{false, true}, 1}, // b done: 1
		{[]string{"a", "c"}, []bool{true, false}, 2}, // a done: 1+2; c never finishes
		{nil, nil, 10}, // no per-request info
	}
	chunks := func(x p) ([]string, []bool) { return x.keys, x.last }
	value := func(x p) float64 { return x.v }
	if mean, n := PerRequestPrefill(passes, chunks, value, false); n != 2 || mean != 2 {
		t.Errorf("without plain passes: mean %v over %d, want 2 over 2 (b 1, a 3)", mean, n)
	}
	if mean, n := PerRequestPrefill(passes, chunks, value, true); n != 3 || mean != 14.0/3 {
		t.Errorf("with plain passes: mean %v over %d, want 14/3 over 3", mean, n)
	}
	if mean, n := PerRequestPrefill([]p{}, chunks, value, true); n != 0 || mean != 0 {
		t.Errorf("no passes: %v over %d, want 0 over 0", mean, n)
	}
}
