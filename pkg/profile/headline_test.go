package profile

import "testing"

// TestHeadline: the client's mean wins; the server pass fills in each figure the client did
// not measure (the runner measures neither); nothing is invented.
func TestHeadline(t *testing.T) {
	c, s, s2 := 12.0, 9.0, 150.0
	for _, tt := range []struct {
		name     string
		m        *Metrics
		tpot     *float64
		ttft     *float64
		tpotFrom string
	}{
		{"client", &Metrics{MeanTPOTMs: &c, ServerPass: &ServerPass{TPOTMoECAPMs: &s, TTFTMoECAPMs: &s2}}, &c, &s2, "client"},
		{"runner", &Metrics{ServerPass: &ServerPass{TPOTMoECAPMs: &s, TTFTMoECAPMs: &s2}}, &s, &s2, "server_pass"},
		{"none", &Metrics{}, nil, nil, ""},
		{"nil", nil, nil, nil, ""},
	} {
		h := tt.m.Headline()
		if h.TPOTMs != tt.tpot || h.TTFTMs != tt.ttft || h.TPOTSource != tt.tpotFrom {
			t.Errorf("%s: %+v", tt.name, h)
		}
	}
}
