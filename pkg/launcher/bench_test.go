package launcher

import (
	"os"
	"testing"
	"time"
)

// BenchmarkMembers is the sampler's per-tick cost of finding a server's processes (parent-PID
// walk over /proc, no environment reads); BenchmarkMembersWithToken is a teardown round's
// (every process's environment read for the token). Both on this machine's whole /proc.
func BenchmarkMembers(b *testing.B) {
	for _, withToken := range []bool{false, true} {
		name := "ppid"
		if withToken {
			name = "ppid+token"
		}
		b.Run(name, func(b *testing.B) {
			p, err := Start(Spec{Argv: []string{"sleep", "3600"}, Env: os.Environ(), LogPath: os.DevNull})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Stop(time.Second)
			procs := len(allProcs())
			for b.Loop() {
				if f := p.scan(withToken); len(f) != 1 {
					b.Fatalf("members %v, want the sleep alone", f)
				}
			}
			b.ReportMetric(float64(procs), "procs")
		})
	}
}
