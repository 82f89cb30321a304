package report

import (
	"encoding/json"
	"fmt"

	"github.com/moecapd/moecapd/pkg/records"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
)

// Derive computes a finished cell's CAP numbers: S-MBU/S-MFU for prefill and decode from
// the pass records under recordsDir (or, without records, from the client metrics), the
// TPOT and TTFT floors with measured ÷ floor, the memory verdict and the rental cost.
// recordsDir may be empty or missing.
//
// It goes through the manifest's JSON form, the same path the report reads old manifests
// by, so a cell enriched at bench time and one derived later by `moecapd report` get the
// same numbers.
// prices are the cost inputs the cell ran with (nil: the hardware table's).
func Derive(m *cell.Manifest, tables *config.Tables, recordsDir string, prices *capmath.Prices) (capmath.Derived, error) {
	if m == nil {
		return capmath.Derived{}, fmt.Errorf("derive: nil manifest")
	}
	if tables == nil {
		return capmath.Derived{}, fmt.Errorf("derive %s: no model/hardware tables", m.Cell.ID)
	}
	c, err := cellInput(m, rowFromManifest(m), tables)
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

// Annotate derives the cell's CAP numbers from cellDir/records and stores them in
// m.Extra["cap"].
func Annotate(m *cell.Manifest, tables *config.Tables, cellDir string, prices *capmath.Prices) error {
	// A cell that did not finish gets its prediction; its partial records say nothing.
	records := ""
	if m.Status == cell.StatusOK {
		records = cell.DirOf(cellDir).Records()
	}
	d, err := Derive(m, tables, records, prices)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if m.Extra == nil {
		m.Extra = map[string]json.RawMessage{}
	}
	m.Extra[ExtraKey] = raw
	return nil
}

// Hook adapts Annotate to cell.Plan's Derive field. Derived numbers are optional for a
// cell, so a failure does not fail it: onErr (may be nil) hears of it, and the report
// derives the numbers again later. prices is read when the cell ends (nil: the table's).
func Hook(tables *config.Tables, prices *capmath.Prices, onErr func(error)) func(m *cell.Manifest, cellDir string) {
	return func(m *cell.Manifest, cellDir string) {
		if err := Annotate(m, tables, cellDir, prices); err != nil && onErr != nil {
			onErr(err)
		}
	}
}
