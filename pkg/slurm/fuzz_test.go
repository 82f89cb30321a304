package slurm

import (
	"testing"
)

// FuzzSlurmOutput: whatever squeue, sacct or scontrol print (another version's format, a
// wrapper's banner, a truncated line), the parsers return tasks or an error, never a
// panic; a configuration they accept has a usable KillWait and array size.
func FuzzSlurmOutput(f *testing.F) {
	f.Add("12_0|13|12|0|RUNNING|None|node1|1:02|6:00:00\n12_1|12|12|1|PENDING|Resources||0:00|6:00:00\n")
	f.Add("12_0|13|COMPLETED|0:0|2026-12-05T10:00:00|2026-12-05T10:05:00|node1\n12_[3-7]|12|PENDING|0:0|Unknown|Unknown|None assigned\n")
	f.Add("KillWait                = 30 sec\nMaxArraySize            = 1001\n")
	f.Add("KillWait = 99999999999999999999 sec\nMaxArraySize = -1\n")
	f.Add("KillWait = 9300000000 sec\n") // its Duration overflowed to negative
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseQueue(s)
		_, _ = ParseAcct(s)
		cfg, err := parseConfig(s)
		if err == nil && (cfg.KillWait < 0 || cfg.MaxArraySize < 1) {
			t.Fatalf("accepted config %+v", cfg)
		}
	})
}
