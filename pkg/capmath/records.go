package capmath

import (
	"fmt"
	"strings"

	"github.com/moecapd/moecapd/pkg/records"
)

// pass is a record as the CAP arithmetic reads it (pkg/records owns the record model):
// numbers the record lacks read 0, as MoE-CAP reads them.
type pass struct {
	mode       records.Mode
	batch      float64 // batch_size
	decBatch   float64 // sequences decoded (records.Pass.DecodeBatch)
	latency    float64 // seconds
	seqLensSum float64
	// act is the mean number of routed experts active per MoE layer as the record gives it
	// (SGLang: averaged over every layer, dense ones included; see physicalPasses).
	act       float64
	gpus      int     // gpu_num; 0 means "use the cell's"
	scheduled float64 // 0 when absent
	context   *float64
	chunks    []chunk
	reqIDs    []string
}

// chunk is one request's share of a prefill pass.
type chunk struct {
	key                   string
	extend, total, prompt float64
	hasTotal, last        bool
}

// usablePasses converts records, leaving out those MoE-CAP skips (no or negative
// expert_activation) and those no arithmetic can use (no positive latency), counted by
// reason. Every forward mode is kept: the MoE-CAP numbers count every non-prefill pass as
// decode, the physical ones only decode steps (records.Mode).
func usablePasses(ps []records.Pass) (out []pass, skipped map[string]int) {
	skipped = map[string]int{}
	for i := range ps {
		r := &ps[i]
		if r.ExpertActivation == nil || *r.ExpertActivation < 0 {
			skipped["no expert_activation"]++
			continue
		}
		if r.Latency == nil || *r.Latency <= 0 {
			skipped["no latency"]++
			continue
		}
		p := pass{mode: r.Mode, batch: records.Val(r.BatchSize), decBatch: records.Val(r.DecodeBatch()), latency: *r.Latency,
			seqLensSum: records.Val(r.SeqLensSum), act: *r.ExpertActivation, gpus: int(records.Val(r.GPUNum)),
			scheduled: records.Val(r.ScheduledTokens), context: r.ContextTokens, reqIDs: r.ReqIDs}
		for _, c := range r.PerReqInfo {
			p.chunks = append(p.chunks, chunk{key: c.Key, extend: records.Val(c.ExtendLen), total: records.Val(c.TotalLen),
				hasTotal: c.TotalLen != nil, prompt: records.Val(c.PromptLen), last: c.IsLastChunk})
		}
		out = append(out, p)
	}
	return out, skipped
}

// probe is MoE-CAP's probe filter as its S-MBU/S-MFU code applies it: a prefill whose
// seq_lens_sum (absent: 0) is at most records.ProbeTokens.
func (p *pass) probe() bool { return p.mode == records.Prefill && p.seqLensSum <= records.ProbeTokens }

// setNotes are the notes a record set carries into Derived.
func setNotes(set *records.Set, skipped map[string]int) []string {
	var notes []string
	if len(skipped) > 0 {
		notes = append(notes, "pass records skipped: "+countList(skipped))
	}
	if len(set.Copies) > 0 {
		notes = append(notes, "record files holding only passes already read elsewhere, counted once: "+strings.Join(set.Copies, ", "))
	}
	if set.Duplicates > 0 {
		notes = append(notes, fmt.Sprintf("%d records repeat a forward_pass_id already read (a pass written more than once): each pass counted once", set.Duplicates))
	}
	if set.Repeats > 0 {
		notes = append(notes, fmt.Sprintf("%d records without forward_pass_id repeat the record before them byte for byte: if the wrapper wrote passes twice, decode figures count them twice", set.Repeats))
	}
	return notes
}
