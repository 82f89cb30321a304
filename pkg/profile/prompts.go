package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// Random token ids are drawn from [randomIDLow, randomIDHigh): ordinary vocabulary in every
// model of the matrix (Qwen's and DeepSeek's special tokens sit above 100000, Mixtral's are
// 0–2), so a random prompt never contains a control token.
const (
	randomIDLow  = 1000
	randomIDHigh = 30000
)

// randomPrompt returns the i-th seeded prompt of exactly length ids. Each index has its own
// stream, so prompt i is made when it is sent (memory follows the requests in flight, not
// num_samples) and two runs with the same --seed send the same prompts.
func randomPrompt(seed int64, i, length int) []int {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6d6f65636170+uint64(i)))
	p := make([]int, length)
	for j := range p {
		p[j] = randomIDLow + rng.IntN(randomIDHigh-randomIDLow)
	}
	return p
}

// fitLength repeats or cuts ids to exactly n tokens, the way MoE-CAP's fixed-length mode
// stretches dataset text to the target.
func fitLength(ids []int, n int) []int {
	out := make([]int, 0, n)
	for len(out) < n {
		out = append(out, ids[:min(len(ids), n-len(out))]...)
	}
	return out
}

type tokenizeReply struct {
	Tokens      []int `json:"tokens"`
	Count       int   `json:"count"`
	MaxModelLen int   `json:"max_model_len"`
}

// tokenizer calls the server's /tokenize, so prompts use the served model's own tokenizer
// and the client needs neither the hub nor Python.
type tokenizer struct {
	hc     *http.Client
	base   string
	model  string
	apiKey string
	plain  bool // the server rejected add_special_tokens; send the bare request
	// timeout bounds each call (--request-timeout): a server that takes the connection and
	// never answers /tokenize would otherwise hold the bench until --bench-timeout.
	timeout time.Duration
}

// bound is ctx limited to the tokenizer's per-call timeout, its cause naming the flag.
func (t *tokenizer) bound(ctx context.Context, path string) (context.Context, context.CancelFunc) {
	if t.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, t.timeout, fmt.Errorf("%s%s gave no answer within %s (--request-timeout)", t.base, path, t.timeout))
}

// callErr is err, or the timeout's cause when the per-call bound ended the call.
func callErr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return c
	}
	return err
}

func (t *tokenizer) tokenize(ctx context.Context, text string) (*tokenizeReply, error) {
	body := map[string]any{"model": t.model, "prompt": text}
	if !t.plain {
		// Without this vLLM prepends BOS, and repeating the text would put BOS mid-prompt.
		body["add_special_tokens"] = false
	}
	rep, status, err := t.post(ctx, body)
	if err == nil && status >= 400 && status < 500 && !t.plain {
		t.plain = true
		delete(body, "add_special_tokens")
		rep, status, err = t.post(ctx, body)
	}
	if err != nil {
		return nil, err
	}
	if status == http.StatusNotFound {
		return nil, fmt.Errorf("%s/tokenize answered 404: this server cannot tokenize; use --datasets random (seeded synthetic ids) instead", t.base)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("%s/tokenize answered HTTP %d", t.base, status)
	}
	if len(rep.Tokens) == 0 {
		return nil, fmt.Errorf("%s/tokenize returned no tokens for a %d-byte text", t.base, len(text))
	}
	return rep, nil
}

func (t *tokenizer) post(ctx context.Context, body any) (*tokenizeReply, int, error) {
	ctx, cancel := t.bound(ctx, "/tokenize")
	defer cancel()
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/tokenize", bytes.NewReader(b))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if t.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+t.apiKey)
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("tokenize dataset text through %s/tokenize: %w", t.base, callErr(ctx, err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, 0, fmt.Errorf("read %s/tokenize reply: %w", t.base, callErr(ctx, err))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode, nil
	}
	var rep tokenizeReply
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, 0, fmt.Errorf("%s/tokenize reply is not {\"tokens\",\"count\",\"max_model_len\"}: %v", t.base, err)
	}
	return &rep, resp.StatusCode, nil
}

// detokenize turns ids back into text, for the chat API, which takes no token ids.
// fix says what the caller's mode needs and what to do when the server cannot (its error
// names only flags the user's mode involves).
func (t *tokenizer) detokenize(ctx context.Context, ids []int, fix string) (string, error) {
	ctx, cancel := t.bound(ctx, "/detokenize")
	defer cancel()
	b, _ := json.Marshal(map[string]any{"model": t.model, "tokens": ids})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/detokenize", bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("detokenize through %s/detokenize: %w", t.base, callErr(ctx, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s/detokenize answered HTTP %d: this server cannot turn token ids back into text; %s", t.base, resp.StatusCode, fix)
	}
	var rep struct {
		Prompt string `json:"prompt"`
		Text   string `json:"text"`
	}
	// A prompt's text is a few times its token count in bytes: 64 MiB bounds what a
	// server that never stops answering can make the client hold.
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&rep); err != nil {
		return "", fmt.Errorf("%s/detokenize reply (at most 64 MiB is read) is not {\"prompt\"}: %w", t.base, callErr(ctx, err))
	}
	if rep.Prompt == "" {
		rep.Prompt = rep.Text
	}
	return rep.Prompt, nil
}

// prompts are the token ids to send, one slice per request, warm-up requests first.
type prompts struct {
	n int
	// ids is prompt i's token ids: made on demand for random prompts, one shared slice per
	// dataset row otherwise, so what is held does not grow with num_samples.
	ids   func(i int) []int
	texts []string // exact-ids + chat API: the ids as text; upstream: the templated text
	// upstream style only: the chat messages and the runner's prompt_lengths.
	msgs    [][]chatMessage
	lengths []int
}

// buildPrompts makes n fixed-length prompts (warm-up ones included). Dataset text is
// tokenized by the server; --datasets random draws seeded ids.
func buildPrompts(ctx context.Context, o *Options, tk *tokenizer, n int) (*prompts, error) {
	p := prompts{n: n}
	if strings.EqualFold(o.Dataset, "random") {
		p.ids = func(i int) []int { return randomPrompt(o.Seed, i, o.InputTokens) }
	} else {
		texts, err := loadDatasetTexts(ctx, o, n)
		if err != nil {
			return nil, err
		}
		rows := make([][]int, min(n, len(texts)))
		for k := range rows {
			rep, err := tk.tokenize(ctx, texts[k])
			if err != nil {
				return nil, err
			}
			if rep.MaxModelLen > 0 && o.InputTokens+o.OutputTokens > rep.MaxModelLen {
				return nil, fmt.Errorf("%d input + %d output tokens exceed the served model's max_model_len %d: lower --target-input-tokens/--target-output-tokens or raise the server's context length", o.InputTokens, o.OutputTokens, rep.MaxModelLen)
			}
			rows[k] = fitLength(rep.Tokens, o.InputTokens)
		}
		p.ids = func(i int) []int { return rows[i%len(rows)] }
	}
	if o.PromptStyle == PromptUpstream {
		if err := upstreamPrompts(ctx, o, tk, &p); err != nil {
			return nil, err
		}
		return &p, nil
	}
	if o.UseChatAPI {
		cache := map[*int]string{}
		for i := range p.n {
			ids := p.ids(i)
			key := &ids[0]
			s, ok := cache[key]
			if !ok {
				var err error
				if s, err = tk.detokenize(ctx, ids, fixChatAPI); err != nil {
					return nil, err
				}
				cache[key] = s
			}
			p.texts = append(p.texts, s)
		}
	}
	return &p, nil
}

// requestBody is the JSON of one streaming request. Completions get token ids, so the prompt
// is exactly InputTokens long (the runner sends chat-templated text, a little longer).
func requestBody(o *Options, ids []int, text string) []byte {
	body := map[string]any{
		"model":          o.Model,
		"max_tokens":     o.OutputTokens,
		"temperature":    0.0,
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
		"ignore_eos":     o.IgnoreEOS,
	}
	if o.UseChatAPI {
		body["messages"] = []map[string]string{{"role": "user", "content": text}}
	} else {
		body["prompt"] = ids
	}
	b, _ := json.Marshal(body)
	return b
}
