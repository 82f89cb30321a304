package sim

import (
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
)

func tables(t testing.TB) *config.Tables {
	t.Helper()
	tb, err := config.LoadTables("")
	if err != nil {
		t.Fatalf("load built-in tables: %v", err)
	}
	return tb
}

func TestGPURawType(t *testing.T) {
	tb := tables(t)
	// The keys of MoE-CAP's MEM_BW_DICT.
	for fam, want := range map[string]string{
		"H100": "NVIDIA-H100-HBM3-80GB",
		"H200": "NVIDIA-H200-140GB",
		"A100": "NVIDIA-A100-SXM4-80GB",
	} {
		if got := GPURawType(tb.Hardware[fam]); got != want {
			t.Errorf("GPURawType(%s) = %q, want %q", fam, got, want)
		}
	}
}
