package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ErrServerLacks is a server that does not serve an endpoint the client's options need
// (errors.Is a *LacksError). It is the user's to fix, by a flag or another server: a usage
// problem (exit 2), found right after readiness, before any request is measured.
var ErrServerLacks = errors.New("the server does not serve an endpoint the client needs")

// LacksError names the endpoint the server lacks, why the client needs it and what to do.
type LacksError struct {
	URL    string // the endpoint asked
	Status int    // its HTTP status (0: no answer the client could use)
	Need   string // what needs it
	Fix    string // what to do
}

func (e *LacksError) Error() string {
	got := fmt.Sprintf("HTTP %d", e.Status)
	if e.Status == 0 {
		got = "no usable reply"
	}
	return fmt.Sprintf("the server does not serve %s (%s), which %s needs: %s", e.URL, got, e.Need, e.Fix)
}

// Is makes errors.Is(err, ErrServerLacks) hold.
func (e *LacksError) Is(target error) bool { return target == ErrServerLacks }

// What to do when a probe finds an endpoint missing.
const (
	fixTokenizeUpstream = "pass --prompt-style exact-ids (token ids, no tokenizer on the server), or use a server that serves /tokenize"
	fixTokenizeDataset  = "use the random dataset (seeded synthetic ids: --datasets random for bench, --dataset random for launch-and-bench) with --prompt-style exact-ids, or a server that serves /tokenize"
	fixTemplate         = "pass --prompt-style exact-ids, or use a server whose /tokenize applies the chat template (vLLM, SGLang)"
	fixDetokUpstream    = "pass --prompt-style exact-ids (token ids, no detokenize), or use a server that serves /detokenize"
	fixDetokChat        = "drop --use-chat-api (completions take token ids exactly), or use a server that serves /detokenize"
)

// Needs lists the server endpoints the options need besides the completions API:
// /tokenize for dataset text and for the upstream prompt style (its chat template and
// prompt lengths), /detokenize for the upstream style and the chat API (text from ids).
func Needs(o Options) []string {
	var out []string
	upstream := o.PromptStyle == PromptUpstream
	if upstream || !strings.EqualFold(o.Dataset, "random") {
		out = append(out, "/tokenize")
	}
	if upstream || o.UseChatAPI {
		out = append(out, "/detokenize")
	}
	return out
}

// Probe asks the server, once each with a tiny request, for what Needs lists: a missing
// one is a *LacksError naming it with what to do; a server that cannot be reached is its
// own error. It sends nothing that is measured.
func Probe(ctx context.Context, o Options) error {
	needs := Needs(o)
	if len(needs) == 0 {
		return nil
	}
	hc := o.httpClient()
	defer hc.CloseIdleConnections()
	tk := &tokenizer{hc: hc, base: baseURL(o.APIURL), model: o.Model, apiKey: o.APIKey, timeout: o.requestTimeout()}
	upstream := o.PromptStyle == PromptUpstream
	need, fix := "the dataset's text ("+o.Dataset+")", fixTokenizeDataset
	if upstream {
		need = "the upstream prompt style (--prompt-style upstream, the runner's prompts)"
		if strings.EqualFold(o.Dataset, "random") {
			fix = fixTokenizeUpstream // exact ids of the random dataset need no tokenizer
		}
	}
	ids := []int{1, 2, 3}
	if needs[0] == "/tokenize" {
		rep, status, err := tk.post(ctx, map[string]any{"model": o.Model, "prompt": "Hello"})
		if err != nil {
			return err
		}
		if status != http.StatusOK || len(rep.Tokens) == 0 {
			return &LacksError{URL: tk.base + "/tokenize", Status: status, Need: need, Fix: fix}
		}
		ids = rep.Tokens
		if upstream {
			rep, status, err := tk.post(ctx, map[string]any{"model": o.Model, "messages": upstreamMessages("Hello"), "add_generation_prompt": true})
			if err != nil {
				return err
			}
			if status != http.StatusOK || len(rep.Tokens) == 0 {
				return &LacksError{URL: tk.base + "/tokenize (chat messages)", Status: status, Need: need, Fix: fixTemplate}
			}
		}
	}
	if needs[len(needs)-1] == "/detokenize" {
		status, err := tk.detokenizeStatus(ctx, ids)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			need, fix := need, fixDetokUpstream
			if !upstream {
				need, fix = "the chat API (--use-chat-api)", fixDetokChat
			}
			return &LacksError{URL: tk.base + "/detokenize", Status: status, Need: need, Fix: fix}
		}
	}
	return nil
}

// requestTimeout is --request-timeout, its default when unset (Probe runs before Run fills
// the defaults in).
func (o *Options) requestTimeout() time.Duration {
	if o.RequestTimeout > 0 {
		return o.RequestTimeout
	}
	return DefaultRequestTimeout
}

// detokenizeStatus is the HTTP status of /detokenize for ids (its reply read and dropped).
func (t *tokenizer) detokenizeStatus(ctx context.Context, ids []int) (int, error) {
	ctx, cancel := t.bound(ctx, "/detokenize")
	defer cancel()
	b, _ := json.Marshal(map[string]any{"model": t.model, "tokens": ids})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/detokenize", bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if t.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+t.apiKey)
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("probe %s/detokenize: %w", t.base, callErr(ctx, err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}
