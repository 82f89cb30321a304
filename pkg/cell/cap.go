package cell

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/records"
)

// ExtraCAP is the key of the CAP numbers in manifest.json "extra": the pipeline stores
// them when the cell ends (AnnotateCAP); the report reads them (CAP) and derives them
// again, with DeriveCAP, only for a manifest without a current block.
const ExtraCAP = "cap"

// CAP is the manifest's stored CAP block (extra "cap"), of whatever DerivedVersion wrote
// it; false when absent or unreadable.
func (m *Manifest) CAP() (capmath.Derived, bool) {
	var d capmath.Derived
	raw, ok := m.Extra[ExtraCAP]
	if !ok || json.Unmarshal(raw, &d) != nil {
		return capmath.Derived{}, false
	}
	return d, true
}

// SetCAP stores d as the manifest's CAP block.
func (m *Manifest) SetCAP(d capmath.Derived) {
	raw, err := json.Marshal(d)
	if err != nil {
		return // a Derived always marshals (plain numbers and strings)
	}
	if m.Extra == nil {
		m.Extra = map[string]json.RawMessage{}
	}
	m.Extra[ExtraCAP] = raw
}

// DeriveCAP computes a finished cell's CAP numbers: S-MBU/S-MFU for prefill and decode from
// the pass records under recordsDir (or, without records, from the client metrics), the
// TPOT and TTFT floors with measured ÷ floor, the memory verdict and the rental cost.
// recordsDir may be empty or missing.
//
// It goes through the manifest's JSON form, the same path the report reads old manifests
// by, so a cell enriched at bench time and one derived later by `moecapd report` get the
// same numbers.
// prices are the cost inputs the cell ran with (nil: the hardware table's).
func DeriveCAP(m *Manifest, tables *config.Tables, recordsDir string, prices *capmath.Prices) (capmath.Derived, error) {
	if m == nil {
		return capmath.Derived{}, fmt.Errorf("derive: nil manifest")
	}
	if tables == nil {
		return capmath.Derived{}, fmt.Errorf("derive %s: no model/hardware tables", m.Cell.ID)
	}
	c, err := capInput(m, tables)
	if err != nil {
		return capmath.Derived{}, fmt.Errorf("derive %s: %w", m.Cell.ID, err)
	}
	c.Prices = prices
	var recs *records.Set
	if recordsDir != "" {
		if recs, err = records.ReadDir(recordsDir); err != nil {
			return capmath.Derived{}, fmt.Errorf("derive %s: records: %w", m.Cell.ID, err)
		}
	}
	d, err := capmath.Derive(c, recs)
	if err != nil {
		return capmath.Derived{}, fmt.Errorf("derive %s: %w", m.Cell.ID, err)
	}
	return d, nil
}

// AnnotateCAP derives the cell's CAP numbers from cellDir/records and stores them in
// manifest extra "cap" (SetCAP).
func (m *Manifest) AnnotateCAP(tables *config.Tables, cellDir string, prices *capmath.Prices) error {
	// A cell that did not finish gets its prediction; its partial records say nothing.
	records := ""
	if m.Status == StatusOK {
		records = DirOf(cellDir).Records()
	}
	d, err := DeriveCAP(m, tables, records, prices)
	if err != nil {
		return err
	}
	m.SetCAP(d)
	m.SetTruth(TruthOf(m, d))
	return nil
}

// capInput is what capmath needs of a finished cell: its hardware, model and the numbers
// it measured.
func capInput(m *Manifest, tables *config.Tables) (capmath.Cell, error) {
	gpus, family := ParseHardware(m.Cell.Hardware)
	if m.Cell.GPUCount > 0 {
		gpus = m.Cell.GPUCount
	}
	hw, ok := tables.HardwareFamily(family)
	if !ok {
		return capmath.Cell{}, fmt.Errorf("hardware family %q not in the hardware table", family)
	}
	if m.Cell.TP > gpus {
		gpus = m.Cell.TP
	}
	c := capmath.Cell{Hardware: hw, GPUs: gpus, BatchSize: m.Cell.BatchSize,
		InputTokens: m.Cell.InputTokens, OutputTokens: m.Cell.OutputTokens, NumSamples: m.Cell.NumSamples}
	// The model as the cell served it (its id), else its short key; a model that cannot be
	// described leaves the CAP numbers absent with the reason, it is no error.
	model, err := tables.Describe(m.Cell.ModelID)
	if err != nil && m.Cell.Model != "" {
		if mk, err2 := tables.Describe(m.Cell.Model); err2 == nil {
			model, err = mk, nil
		}
	}
	if err != nil {
		c.ModelErr = err.Error()
		return c, nil
	}
	// A server told to keep an fp8 KV cache reads half the KV bytes.
	if b, ok := config.KVCacheBytes(m.Server.Argv); ok {
		model.KVElemBytes = b
	}
	c.Model = model
	c.Flavor = m.Cell.Backend
	c.SimTimeScale, c.SimOverrides = capmath.SimSettings(m.Server.Argv)
	if mt := m.Metrics; mt != nil && m.Status == StatusOK {
		c.Ran = true
		// Client latencies when the native client measured them; the runner's (or the
		// records') server-pass latencies under their own names.
		h := mt.Headline()
		c.MeanTPOTMs, c.MeanTTFTMs = h.ClientTPOTMs, h.ClientTTFTMs
		c.ServerTPOTMs, c.ServerTTFTMs = h.ServerTPOTMs, h.ServerTTFTMs
		c.AvgActivationDecode = mt.AvgExpertActivationDecode
		c.AvgDecodeBatchSize = mt.AvgDecodeBatchSize
		c.ClientInFlightMean, c.ClientCPUFraction = mt.ClientInFlightMean, mt.ClientCPUFraction
		c.TotalOutputTokens = mt.TotalOutputTokens
		// The one cost window (docs/DESIGN.md "Cost"), named with its clock: the GPU
		// sampler's bench window when NVML measured one, else moecapd's bench phase, else
		// the client's request window. (Manifests written without NVML before
		// DerivedVersion 3 stored the client's window as the telemetry's bench_window_s;
		// it is not taken for a telemetry window.)
		switch t := m.Telemetry; {
		case t != nil && t.Available && t.BenchWindowS != nil && *t.BenchWindowS > 0:
			c.WindowS, c.Window = *t.BenchWindowS, capmath.WindowTelemetry
		case m.Timings.Bench > 0:
			c.WindowS, c.Window = m.Timings.Bench, capmath.WindowBenchPhase
		case mt.DurationS > 0:
			c.WindowS, c.Window = mt.DurationS, capmath.WindowClient
			if cc := mt.ClockCheck; cc != nil && cc.DurationSource != "" {
				c.Window = "client request window (" + cc.DurationSource + ")" // the runner's
			}
		}
		if t := m.Telemetry; t != nil {
			c.EnergyJ, c.EnergySource = t.Energy()
		}
	}
	return c, nil
}

// ParseHardware splits a hardware label "<count>x<family>" (8xH200) into its parts.
// A label that does not have that shape is returned whole as the family with count 0.
func ParseHardware(label string) (int, string) {
	i := strings.IndexByte(label, 'x')
	if i <= 0 {
		return 0, label
	}
	n, err := strconv.Atoi(label[:i])
	if err != nil || n <= 0 {
		return 0, label
	}
	return n, label[i+1:]
}
