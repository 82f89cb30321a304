package records

// DecodeContexts fills ContextTokens of every decode step (Mode.DecodeStep) that has none:
// the batch's total context, every sequence's prompt plus the tokens generated so far.
//
//   - seq_lens_sum is that number in SGLang's records, and is taken when it can be one: a
//     "decode" pass whose seq_lens_sum exceeds both its batch_size and its scheduled_tokens
//     (vLLM's seq_lens_sum is the tokens scheduled, about one per sequence).
//   - Otherwise it is rebuilt from the trace: each request's prompt_len from its prefill
//     chunks, plus one token from its prefill and one per decode step it appeared in before
//     this one, so a request's j-th decode step attends to prompt + j positions. The count
//     restarts whenever a request key is prefilled again, so a trace that names requests
//     only by pool slot (older SGLang) counts each occupant of a slot from its own prefill,
//     not from the slot's first one. A step holding a request whose prompt the trace never
//     showed keeps ContextTokens nil.
func DecodeContexts(passes []Pass) {
	prompt := map[string]float64{}
	generated := map[string]float64{}
	for i := range passes {
		p := &passes[i]
		if p.Mode == Prefill {
			for _, c := range p.PerReqInfo {
				if c.PromptLen == nil {
					continue
				}
				for _, k := range chunkKeys(c) {
					prompt[k] = *c.PromptLen
					generated[k] = 0
					if c.IsLastChunk {
						generated[k] = 1 // the prefill's own first token
					}
				}
			}
			continue
		}
		if !p.Mode.DecodeStep() {
			continue
		}
		if p.ContextTokens == nil && seqLensIsContext(p) {
			v := *p.SeqLensSum
			p.ContextTokens = &v
		}
		sum, known := 0.0, len(p.ReqIDs) > 0
		for _, id := range p.ReqIDs {
			k := "id:" + id
			if _, ok := prompt[k]; !ok {
				k = "pool:" + id
			}
			pl, ok := prompt[k]
			if !ok {
				known = false
			}
			sum += pl + generated[k]
			generated[k]++
		}
		if known && p.ContextTokens == nil {
			p.ContextTokens = &sum
		}
	}
}

// chunkKeys are the keys a prefill chunk registers its request under: its Key, and its pool
// slot too when the record names both (SGLang's decode req_ids name pool slots).
func chunkKeys(c ReqChunk) []string {
	keys := []string{}
	if c.Key != "" {
		keys = append(keys, c.Key)
	}
	if c.Slot != "" && "pool:"+c.Slot != c.Key {
		keys = append(keys, "pool:"+c.Slot)
	}
	return keys
}

// seqLensIsContext reports whether a decode step's seq_lens_sum can be its batch's context.
func seqLensIsContext(p *Pass) bool {
	if p.Mode != Decode || p.SeqLensSum == nil || *p.SeqLensSum <= 0 {
		return false
	}
	if p.BatchSize == nil || *p.SeqLensSum <= *p.BatchSize {
		return false
	}
	return p.ScheduledTokens == nil || *p.SeqLensSum > *p.ScheduledTokens
}

// DecodeBatch is the number of sequences a decode step decoded: batch_size for "decode";
// for "mixed", its decode requests (req_ids) when the record lists them, else batch_size
// (which then also counts the requests it prefilled). Nil when unknown.
func (p *Pass) DecodeBatch() *float64 {
	if p.Mode == Mixed && len(p.ReqIDs) > 0 {
		v := float64(len(p.ReqIDs))
		return &v
	}
	return p.BatchSize
}
