package records

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/fsx"
)

// Set is what ReadDir found under a records directory.
type Set struct {
	Passes []Pass
	// Files are the record files read, relative to the records directory.
	Files []string
	// Copies are record files left out because every record in them was already read from
	// another file (the vLLM wrapper's own log next to the client's dump).
	Copies []string
	// Duplicates counts passes left out because a pass with the same forward_pass_id was
	// already read (a wrapper that wrote each pass once per tensor-parallel rank).
	Duplicates int
	// Repeats counts records without forward_pass_id that repeat the record just before
	// them byte for byte: likely one pass written twice, kept (nothing proves it), and said.
	Repeats int
}

// ReadDir reads every pass record under dir: moecapd's WindowFile when it exists (and then
// only it), else SGLang's <model path>/expert_distribution_record.jsonl and vLLM's JSONL or
// JSON dumps (a bare array, or the /dump_batch_recording reply
// {"status","records":[…],"total_records"}). Files that hold no records (vLLM's flag and
// state files) are passed over; a file whose every record was read from another one counts
// once. A missing dir is no error: the set is empty.
func ReadDir(dir string) (*Set, error) {
	set := &Set{}
	// Every file here may be compressed at rest (fsx: NAME.zst once the cell has ended).
	if b, err := fsx.ReadFile(filepath.Join(dir, WindowFile)); err == nil {
		// The one file read: no other file's records to compare with, so no canonical forms
		// (re-encoding every record was most of the time a report spent here).
		ps, _, err := decode(b, false)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, WindowFile), err)
		}
		set.Files = []string{WindowFile}
		set.add(ps)
		return set, nil
	}
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path == dir {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		ext := strings.ToLower(filepath.Ext(fsx.Base(path)))
		if ext != ".json" && ext != ".jsonl" {
			return nil
		}
		b, err := fsx.ReadFile(path)
		if err != nil {
			return err
		}
		ps, keys, err := decode(b, true)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(keys) == 0 {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		copyOf := true
		for _, k := range keys {
			if !seen[k] {
				copyOf = false
				break
			}
		}
		if copyOf {
			set.Copies = append(set.Copies, rel)
			return nil
		}
		for _, k := range keys {
			seen[k] = true
		}
		set.add(ps)
		set.Files = append(set.Files, rel)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(set.Files)
	return set, nil
}

// add appends passes, each forward_pass_id once.
func (s *Set) add(ps []Pass) {
	ids := map[float64]bool{}
	for i := range s.Passes {
		if id := s.Passes[i].ForwardPassID; id != nil {
			ids[*id] = true
		}
	}
	for _, p := range ps {
		if p.ForwardPassID != nil {
			if ids[*p.ForwardPassID] {
				s.Duplicates++
				continue
			}
			ids[*p.ForwardPassID] = true
		} else if n := len(s.Passes); n > 0 && s.Passes[n-1].ForwardPassID == nil && sameRaw(&s.Passes[n-1], &p) {
			s.Repeats++
		}
		s.Passes = append(s.Passes, p)
	}
}

// canonical is a record re-encoded with every object's keys sorted and numbers in one
// form, so the same pass written by two writers compares equal.
func canonical(v json.RawMessage) string {
	var x any
	if json.Unmarshal(v, &x) != nil {
		return string(v)
	}
	b, _ := json.Marshal(x)
	return string(b)
}

func sameRaw(a, b *Pass) bool {
	x, _ := json.Marshal(a.Raw)
	y, _ := json.Marshal(b.Raw)
	return bytes.Equal(x, y)
}

// decode reads a stream of JSON values (one document or JSON lines) and returns the pass
// records among them with, when canon, a canonical form of each (the same pass re-encoded
// by another writer has the same form; without canon one "" per record, which only
// counts). Bytes that are not JSON at all hold no records.
func decode(b []byte, canon bool) ([]Pass, []string, error) {
	dec := json.NewDecoder(bytes.NewReader(PythonJSON(b)))
	var ps []Pass
	var keys []string
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err == io.EOF {
			return ps, keys, nil
		}
		if err != nil {
			if len(keys) == 0 {
				return nil, nil, nil // not a record file (a flag file ending in .json)
			}
			return ps, keys, fmt.Errorf("after %d records: %w", len(keys), err)
		}
		ps, keys = addValue(v, ps, keys, canon)
	}
}

func addValue(v json.RawMessage, ps []Pass, keys []string, canon bool) ([]Pass, []string) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return ps, keys
	}
	switch v[0] {
	case '[':
		var arr []json.RawMessage
		if json.Unmarshal(v, &arr) != nil {
			return ps, keys
		}
		for _, e := range arr {
			ps, keys = addValue(e, ps, keys, canon)
		}
	case '{':
		var probe struct {
			Records     json.RawMessage  `json:"records"`
			ForwardMode *json.RawMessage `json:"forward_mode"`
		}
		if json.Unmarshal(v, &probe) != nil {
			return ps, keys
		}
		if probe.ForwardMode == nil {
			if len(probe.Records) > 0 {
				return addValue(probe.Records, ps, keys, canon)
			}
			return ps, keys
		}
		p, err := Parse(v)
		if err != nil {
			return ps, append(keys, string(v))
		}
		if !canon {
			return append(ps, p), append(keys, "")
		}
		return append(ps, p), append(keys, canonical(v))
	}
	return ps, keys
}

// ReadJSONL reads a JSON-lines file of records (path, or path.zst: fsx.Open).
func ReadJSONL(path string) ([]Pass, error) {
	f, err := fsx.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var raws []json.RawMessage
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		if b := bytes.TrimSpace(sc.Bytes()); len(b) > 0 {
			raws = append(raws, json.RawMessage(bytes.Clone(PythonJSON(b))))
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("read %s: a line over 256 MiB, not a pass record an engine writes: %w", path, err)
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return ParseAll(path, raws)
}

// JSON is a pass as the window file holds it: the record verbatim, plus context_tokens when
// moecapd knows the decode batch's context.
func (p *Pass) JSON() ([]byte, error) {
	m := make(map[string]json.RawMessage, len(p.Raw)+1)
	for k, v := range p.Raw {
		m[k] = v
	}
	if p.ContextTokens != nil {
		m["context_tokens"] = json.RawMessage(strconv.FormatFloat(*p.ContextTokens, 'f', -1, 64))
	}
	return json.Marshal(m)
}

// WindowBytes is passes in the window file's form, one JSON line each.
func WindowBytes(passes []Pass) ([]byte, error) {
	var buf bytes.Buffer
	for i := range passes {
		b, err := passes[i].JSON()
		if err != nil {
			return nil, err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}
