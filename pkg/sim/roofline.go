package sim

import (
	"math"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/config"
)

// GPURawType is the GPU name the way MoE-CAP's get_gpu_details formats it (spaces to
// dashes, any "<n>GB" part moved to the end as the rounded memory size), e.g.
// "NVIDIA-H100-HBM3-80GB"; MoE-CAP looks its bandwidth tables up by this string.
func GPURawType(hw config.Hardware) string {
	name := hw.Name
	if name == "" {
		name = "NVIDIA " + hw.Family
	}
	var parts []string
	for _, p := range strings.FieldsFunc(name, func(r rune) bool { return r == ' ' || r == '-' }) {
		if n, ok := strings.CutSuffix(p, "GB"); ok && n != "" && strings.Trim(n, "0123456789") == "" {
			continue
		}
		parts = append(parts, p)
	}
	gb := int(math.Round(hw.MemoryBytes / (1 << 30)))
	return strings.Join(parts, "-") + "-" + strconv.Itoa(gb) + "GB"
}
