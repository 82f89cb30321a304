package profile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Prompt styles.
const (
	// PromptUpstream builds the text MoE-CAP's runner sends: the fixed-length dataset text
	// plus "\n\nPlease continue writing:" as the user turn after the fixed system prompt,
	// through the served model's chat template, sent as text and not streamed. The prompt is
	// a little longer than the target (template and suffix); its length is what the server
	// counted. Client-side TTFT/ITL do not exist in this style.
	PromptUpstream = "upstream"
	// PromptExactIDs sends exactly InputTokens token ids, streaming, so client TTFT, TPOT and
	// ITL are measured and the prompt length is exact.
	PromptExactIDs = "exact-ids"
)

// The runner's fixed texts (documented in the MoE-CAP reference: system prompt and suffix).
const (
	upstreamSystemPrompt = "Output the answer directly without description."
	upstreamSuffix       = "\n\nPlease continue writing:"
)

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func upstreamMessages(user string) []chatMessage {
	return []chatMessage{{Role: "system", Content: upstreamSystemPrompt}, {Role: "user", Content: user}}
}

// What to do when the server lacks /detokenize, per mode that needs it.
const (
	fixChatAPI  = "the chat API takes text, so --use-chat-api needs it: drop --use-chat-api (completions take token ids exactly), or use a server that has /detokenize"
	fixUpstream = "the upstream prompt style (--prompt-style upstream) builds its fixed-length text with it: pass --prompt-style exact-ids (token ids, no detokenize), or use a server that has /detokenize"
)

// templated asks the server to apply its chat template to messages (vLLM's and SGLang's
// /tokenize take "messages" with add_generation_prompt) and returns the template's token ids.
func (t *tokenizer) templated(ctx context.Context, msgs []chatMessage) ([]int, error) {
	body := map[string]any{"model": t.model, "messages": msgs, "add_generation_prompt": true}
	rep, status, err := t.post(ctx, body)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK || len(rep.Tokens) == 0 {
		return nil, fmt.Errorf("%s/tokenize cannot apply the chat template (HTTP %d): --prompt-style upstream needs a server that tokenizes chat messages; use --prompt-style exact-ids", t.base, status)
	}
	return rep.Tokens, nil
}

// countText is the token count of text with the tokenizer's default special tokens, as the
// runner's tokenizer.encode counts its prompt.
func (t *tokenizer) countText(ctx context.Context, text string) (int, error) {
	rep, status, err := t.post(ctx, map[string]any{"model": t.model, "prompt": text})
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("%s/tokenize answered HTTP %d", t.base, status)
	}
	if rep.Count > 0 {
		return rep.Count, nil
	}
	return len(rep.Tokens), nil
}

// upstreamPrompts turns the fixed-length prompts (token ids) into the runner's request
// payloads: user text = decoded ids + suffix; completions get the chat-templated text,
// chat completions the messages. lengths are the runner's prompt_lengths.
func upstreamPrompts(ctx context.Context, o *Options, tk *tokenizer, p *prompts) error {
	type built struct {
		text string
		msgs []chatMessage
		n    int
	}
	cache := map[*int]built{}
	p.texts = make([]string, p.n)
	p.msgs = make([][]chatMessage, p.n)
	p.lengths = make([]int, p.n)
	for i := range p.n {
		ids := p.ids(i)
		key := &ids[0]
		b, ok := cache[key]
		if !ok {
			fixed, err := tk.detokenize(ctx, ids, fixUpstream)
			if err != nil {
				return err
			}
			b.msgs = upstreamMessages(fixed + upstreamSuffix)
			tmpl, err := tk.templated(ctx, b.msgs)
			if err != nil {
				return err
			}
			if o.UseChatAPI {
				b.n = len(tmpl)
			} else {
				if b.text, err = tk.detokenize(ctx, tmpl, fixUpstream); err != nil {
					return err
				}
				if b.n, err = tk.countText(ctx, b.text); err != nil {
					return err
				}
			}
			cache[key] = b
		}
		p.texts[i], p.msgs[i], p.lengths[i] = b.text, b.msgs, b.n
	}
	return nil
}

// upstreamBody is one non-streaming request as the runner sends it.
func upstreamBody(o *Options, text string, msgs []chatMessage) []byte {
	body := map[string]any{
		"model":       o.Model,
		"temperature": 0.0,
		"stream":      false,
		"ignore_eos":  o.IgnoreEOS,
	}
	if o.UseChatAPI {
		body["messages"] = msgs
		body["max_completion_tokens"] = o.OutputTokens
	} else {
		body["prompt"] = text
		body["best_of"] = 1
		body["max_tokens"] = o.OutputTokens
	}
	b, _ := json.Marshal(body)
	return b
}

// completionReply is the part of a non-streaming (chat) completion the client reads.
type completionReply struct {
	Choices []struct {
		Text    string `json:"text"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

// once sends one non-streaming request and fills r: E2EL is send to complete reply; there
// is no client TTFT. Token counts come from usage, which such a reply must carry.
func (s *streamer) once(ctx context.Context, iw *idleWatch, body []byte, r *RequestResult) error {
	resp, err := s.post(ctx, iw, body, "", r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	limit := int64(256 << 20)
	if s.maxTokens > 0 {
		limit = maxReplyBytes(s.maxTokens)
	}
	data, err := io.ReadAll(&limitedReader{r: resp.Body, n: limit})
	r.e2el = time.Since(r.start)
	if errors.Is(err, errTooLong) {
		return fail(KindProtocolError, "the reply exceeds %d bytes, more than max_tokens=%d allows", limit, s.maxTokens)
	}
	if err != nil {
		return err
	}
	var rep completionReply
	if err := json.Unmarshal(data, &rep); err != nil {
		return fail("malformed reply", "the reply is not a completion: %v: %.120q", err, data)
	}
	if len(rep.Choices) == 0 {
		if f := errorReply(data); f != nil {
			return f
		}
		return fail("no output", "the reply holds no choices")
	}
	if rep.Usage != nil && s.maxTokens > 0 && rep.Usage.CompletionTokens > s.maxTokens+tokenMargin(s.maxTokens) {
		r.UsageStreamMismatch = true // more tokens claimed than max_tokens allows
	}
	r.OutputText = rep.Choices[0].Text + rep.Choices[0].Message.Content
	if s.chunks != nil {
		s.chunks.Add(1)
	}
	if rep.Usage == nil {
		r.UsageMissing = true
		r.PromptTokens = r.InputTokens
		return nil
	}
	r.PromptTokens, r.OutputTokens = rep.Usage.PromptTokens, rep.Usage.CompletionTokens
	if r.OutputText == "" && r.OutputTokens > 0 {
		r.UsageStreamMismatch = true // tokens claimed, no text returned
	}
	if r.PromptTokens < 0 || r.OutputTokens < 0 {
		r.UsageStreamMismatch = true // negative counts: a usage that cannot be trusted
	}
	return nil
}
