package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxBody caps request bodies: a 160k-token prompt as ids is about 1.5 MB of JSON.
const maxBody = 64 << 20

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// writeError answers in the OpenAI error shape that vLLM and SGLang use.
func writeError(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, map[string]any{
		"object":  "error",
		"message": msg,
		"type":    typ,
		"param":   nil,
		"code":    code,
		"error":   map[string]any{"message": msg, "type": typ, "param": nil, "code": code},
	})
}

func requireMethod(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method != m {
		w.Header().Set("Allow", m)
		writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, m))
		return false
	}
	return true
}

// decodeBody reads a JSON body into v; on failure it has already answered 400.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("reading request body: %v", err))
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("request body is not valid JSON: %v", err))
		return false
	}
	return true
}

// checkModel answers 400 when the request names no model and 404 when it names another
// one: the MoE-CAP runner must send the server's model path verbatim.
func (s *Server) checkModel(w http.ResponseWriter, model *string) bool {
	if model == nil || *model == "" {
		writeError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("\"model\" is required; this server serves %q", s.cfg.ServedModel))
		return false
	}
	if *model != s.cfg.ServedModel {
		writeError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist. This server serves `%s`; send that string as \"model\".", *model, s.cfg.ServedModel))
		return false
	}
	return true
}

// promptIn is one prompt of a completion request, as text or as token ids.
type promptIn struct {
	text  string
	ids   []int
	isIDs bool
}

// parsePrompt accepts every shape of the OpenAI completions API: a string, a list of
// strings, a list of token ids, or a list of token-id lists.
func parsePrompt(raw json.RawMessage) ([]promptIn, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errors.New("\"prompt\" is required")
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []promptIn{{text: one}}, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errors.New("\"prompt\" must be a string, a list of strings, a list of token ids or a list of token-id lists")
	}
	if len(list) == 0 {
		return nil, errors.New("\"prompt\" is an empty list")
	}
	var ids []int
	if json.Unmarshal(raw, &ids) == nil {
		return []promptIn{{ids: ids, isIDs: true}}, nil
	}
	out := make([]promptIn, 0, len(list))
	for i, el := range list {
		var t string
		if json.Unmarshal(el, &t) == nil {
			out = append(out, promptIn{text: t})
			continue
		}
		var l []int
		if json.Unmarshal(el, &l) == nil {
			out = append(out, promptIn{ids: l, isIDs: true})
			continue
		}
		return nil, fmt.Errorf("\"prompt\"[%d] is neither a string nor a list of token ids", i)
	}
	return out, nil
}

func (s *Server) countPrompt(p promptIn) (int, error) {
	if !p.isIDs {
		return s.tok.Count(p.text), nil
	}
	for _, id := range p.ids {
		if id < 0 || id >= s.tok.Vocab && s.tok.Vocab > 0 {
			return 0, fmt.Errorf("token id %d is outside the vocabulary [0, %d)", id, s.tok.Vocab)
		}
	}
	return len(p.ids), nil
}

type completionRequest struct {
	Model         *string         `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	Messages      []chatMessage   `json:"messages"`
	MaxTokens     *int            `json:"max_tokens"`
	MaxCompletion *int            `json:"max_completion_tokens"`
	Temperature   *float64        `json:"temperature"`
	IgnoreEOS     bool            `json:"ignore_eos"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	TotalTokens      int `json:"total_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// handleCompletions serves /v1/completions. Every prompt is generated to exactly
// max_tokens tokens: the simulated model never emits EOS, so ignore_eos is accepted and
// has nothing to change (the benchmark always sets it).
func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	s.complete(w, r, false)
}

// handleChat serves /v1/chat/completions: the messages go through the simulated chat
// template (chatTemplate) and are then generated like a text prompt.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	s.complete(w, r, true)
}

// chatMessage is one message of a chat request.
type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// chatTemplate renders messages the ChatML way (Qwen's template) with the generation prompt
// appended, as a served model's tokenizer.apply_chat_template(add_generation_prompt=True)
// does.
func chatTemplate(msgs []chatMessage) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
	}
	b.WriteString("<|im_start|>assistant\n")
	return b.String()
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request, chat bool) {
	if !requireMethod(w, r, http.MethodPost) {
		return
	}
	var req completionRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if !s.checkModel(w, req.Model) {
		return
	}
	var prompts []promptIn
	if chat {
		if len(req.Messages) == 0 {
			writeError(w, http.StatusBadRequest, "BadRequestError", "\"messages\" is required on /v1/chat/completions")
			return
		}
		prompts = []promptIn{{text: chatTemplate(req.Messages)}}
	} else {
		if len(req.Messages) > 0 {
			writeError(w, http.StatusBadRequest, "BadRequestError", "/v1/completions takes \"prompt\", not \"messages\"; chat messages go to /v1/chat/completions")
			return
		}
		var err error
		if prompts, err = parsePrompt(req.Prompt); err != nil {
			writeError(w, http.StatusBadRequest, "BadRequestError", err.Error())
			return
		}
	}
	maxTokens := 16 // the OpenAI default
	if req.MaxTokens != nil {
		maxTokens = *req.MaxTokens
	}
	if chat && req.MaxCompletion != nil {
		maxTokens = *req.MaxCompletion
	}
	if maxTokens < 1 {
		writeError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf("max_tokens must be at least 1, got %d", maxTokens))
		return
	}
	if maxTokens > 1 && s.misbehave(w, r, req.Stream) {
		return
	}
	lie := false
	if (s.cfg.Fault == FaultHTTP500Some || s.cfg.Fault == FaultUsageLie) && maxTokens > 1 && s.faultN.Add(1)%4 == 0 {
		if s.cfg.Fault == FaultHTTP500Some {
			writeError(w, http.StatusInternalServerError, "InternalServerError", "simulated fault: the scheduler dropped this request")
			return
		}
		lie = true
	}
	seq := s.seq.Add(1)
	id := "cmpl-" + strconv.FormatUint(seq, 16) + "-" + strconv.FormatInt(time.Now().UnixNano()&0xffffff, 16)
	notify := make(chan struct{}, 1)
	reqs := make([]*request, len(prompts))
	promptTotal := 0
	for i, p := range prompts {
		n, err := s.countPrompt(p)
		if err != nil {
			writeError(w, http.StatusBadRequest, "BadRequestError", err.Error())
			return
		}
		if n == 0 {
			writeError(w, http.StatusBadRequest, "BadRequestError", "the prompt is empty (0 tokens)")
			return
		}
		if n+maxTokens > s.cfg.MaxModelLen {
			writeError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf(
				"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
				s.cfg.MaxModelLen, n+maxTokens, n, maxTokens))
			return
		}
		// Memory: a request whose KV cache can never fit beside the weights (physics, in
		// engine.go) is refused the way vLLM refuses one.
		if err := s.eng.admissible(n, maxTokens); err != nil {
			s.logf("ValueError: %v", err)
			writeError(w, http.StatusBadRequest, "BadRequestError", err.Error())
			return
		}
		promptTotal += n
		reqs[i] = &request{id: id + "-" + strconv.Itoa(i), seq: seq*64 + uint64(i), prompt: n, maxTokens: maxTokens, notify: notify}
	}
	for _, rq := range reqs {
		select {
		case s.eng.submit <- rq:
		case <-s.stopping:
			writeError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "server is shutting down")
			return
		}
	}
	u := usage{PromptTokens: promptTotal, CompletionTokens: maxTokens * len(reqs), TotalTokens: promptTotal + maxTokens*len(reqs)}
	if lie {
		u.CompletionTokens *= 10
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
	}
	if req.Stream {
		s.stream(w, r, id, reqs, req.StreamOptions != nil && req.StreamOptions.IncludeUsage, u, chat)
		return
	}
	s.await(w, r, id, reqs, u, chat)
}

// misbehave plays the misbehaving-server faults on one completion; false when none applies.
func (s *Server) misbehave(w http.ResponseWriter, r *http.Request, stream bool) bool {
	gone := func() bool {
		select {
		case <-r.Context().Done():
			return true
		case <-s.stopping:
			return true
		default:
			return false
		}
	}
	hold := func() {
		select {
		case <-r.Context().Done():
		case <-s.stopping:
		}
	}
	startStream := func() *http.ResponseController {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		return rc
	}
	const chunk = `data: {"id":"cmpl-fault","object":"text_completion","choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null}]}` + "\n\n"
	switch s.cfg.Fault {
	case FaultNoHeaders:
		s.logf("simulated fault: a completion that never answers (--sim-fault %s)", s.cfg.Fault)
		hold()
	case FaultError200:
		writeJSON(w, http.StatusOK, map[string]any{"object": "error", "type": "InternalServerError", "code": 500,
			"message": "simulated fault: the engine rejected the request (--sim-fault error-200)"})
	case FaultStallMidStream:
		if !stream {
			hold()
			return true
		}
		rc := startStream()
		fmt.Fprint(w, chunk+chunk)
		rc.Flush()
		s.logf("simulated fault: the stream stalls after 2 chunks (--sim-fault %s)", s.cfg.Fault)
		hold()
	case FaultIgnoreMaxTokens, FaultEndlessLine:
		if !stream {
			return false
		}
		rc := startStream()
		piece := strings.Repeat(chunk, 64)
		if s.cfg.Fault == FaultEndlessLine {
			fmt.Fprint(w, "data: ")
			piece = strings.Repeat("x", 16<<10)
		}
		for !gone() {
			if _, err := io.WriteString(w, piece); err != nil {
				break
			}
			if rc.Flush() != nil {
				break
			}
		}
	default:
		return false
	}
	return true
}

// wait blocks until the scheduler has news for this HTTP request. It reports false when
// the request is over for another reason: the client left or the server is stopping. A
// crash aborts the connection the way a dying process would.
func (s *Server) wait(r *http.Request, reqs []*request) bool {
	select {
	case <-reqs[0].notify:
		return true
	case <-r.Context().Done():
	case <-s.stopping:
	case <-s.crashed:
		abandon(reqs)
		panic(http.ErrAbortHandler)
	}
	abandon(reqs)
	return false
}

func abandon(reqs []*request) {
	for _, rq := range reqs {
		rq.gone.Store(true)
	}
}

// maybeCrash fires crash-mid-run once some tokens of a completion are out.
func (s *Server) maybeCrash(generated int) {
	if s.cfg.Fault == FaultCrashMidRun && generated >= 3 {
		s.crash()
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) await(w http.ResponseWriter, r *http.Request, id string, reqs []*request, u usage, chat bool) {
	for {
		done := true
		for _, rq := range reqs {
			g := int(rq.generated.Load())
			s.maybeCrash(g)
			if g < rq.maxTokens {
				done = false
			}
		}
		if done {
			break
		}
		if !s.wait(r, reqs) {
			return
		}
	}
	type choice struct {
		Index        int     `json:"index"`
		Text         string  `json:"text"`
		Logprobs     any     `json:"logprobs"`
		FinishReason string  `json:"finish_reason"`
		StopReason   *string `json:"stop_reason"`
	}
	choices := make([]choice, len(reqs))
	texts := make([]string, len(reqs))
	for i, rq := range reqs {
		var sb strings.Builder
		for pos := 0; pos < rq.maxTokens; pos++ {
			sb.WriteString(outputWord(rq.seq, pos))
		}
		texts[i] = sb.String()
		choices[i] = choice{Index: i, Text: texts[i], FinishReason: "length"}
	}
	if chat {
		type msg struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		}
		type chatChoice struct {
			Index        int    `json:"index"`
			Message      msg    `json:"message"`
			FinishReason string `json:"finish_reason"`
		}
		cc := make([]chatChoice, len(reqs))
		for i := range reqs {
			cc[i] = chatChoice{Index: i, Message: msg{Role: "assistant", Content: texts[i]}, FinishReason: "length"}
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"id": id, "object": "chat.completion", "created": time.Now().Unix(),
			"model": s.cfg.ServedModel, "choices": cc, "usage": u,
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id":      id,
		"object":  "text_completion",
		"created": time.Now().Unix(),
		"model":   s.cfg.ServedModel,
		"choices": choices,
		"usage":   u,
	})
}

// stream sends one server-sent event per generated token, vLLM style: the chunk of the
// last token carries finish_reason "length", then the usage chunk (empty choices) when
// asked for, then [DONE]. Chunks are assembled in one reused buffer and flushed as soon as
// the scheduler produces them.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, id string, reqs []*request, includeUsage bool, u usage, chat bool) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	created := time.Now().Unix()
	model, _ := json.Marshal(s.cfg.ServedModel)
	object, textKey := "text_completion", `,"text":"`
	if chat {
		object, textKey = "chat.completion.chunk", `,"delta":{"content":"`
	}
	prefix := []byte(`data: {"id":"` + id + `","object":"` + object + `","created":` + strconv.FormatInt(created, 10) +
		`,"model":` + string(model) + `,"choices":[{"index":`)
	closeText := `"`
	if chat {
		closeText = `"}`
	}
	buf := make([]byte, 0, 4096)
	sent := make([]int, len(reqs))
	for {
		buf = buf[:0]
		done := true
		most := 0
		for i, rq := range reqs {
			g := int(rq.generated.Load())
			for sent[i] < g {
				buf = append(buf, prefix...)
				buf = strconv.AppendInt(buf, int64(i), 10)
				buf = append(buf, textKey...)
				buf = append(buf, outputWord(rq.seq, sent[i])...)
				buf = append(buf, closeText...)
				sent[i]++
				if sent[i] == rq.maxTokens {
					buf = append(buf, `,"logprobs":null,"finish_reason":"length","stop_reason":null}]}`+"\n\n"...)
				} else {
					buf = append(buf, `,"logprobs":null,"finish_reason":null,"stop_reason":null}]}`+"\n\n"...)
				}
			}
			if sent[i] < rq.maxTokens {
				done = false
			}
			most = max(most, sent[i])
		}
		if done {
			if includeUsage {
				ub, _ := json.Marshal(u)
				buf = append(buf, `data: {"id":"`+id+`","object":"`+object+`","created":`+strconv.FormatInt(created, 10)+
					`,"model":`+string(model)+`,"choices":[],"usage":`...)
				buf = append(buf, ub...)
				buf = append(buf, "}\n\n"...)
			}
			buf = append(buf, "data: [DONE]\n\n"...)
		}
		if len(buf) > 0 {
			if _, err := w.Write(buf); err != nil {
				abandon(reqs)
				return
			}
			if err := rc.Flush(); err != nil {
				abandon(reqs)
				return
			}
		}
		if done {
			return
		}
		s.maybeCrash(most)
		if !s.wait(r, reqs) {
			return
		}
	}
}

type tokenizeRequest struct {
	Model    *string       `json:"model"`
	Prompt   *string       `json:"prompt"`
	Messages []chatMessage `json:"messages"` // vLLM's and SGLang's chat form: the template is applied
}

func (s *Server) handleTokenize(w http.ResponseWriter, r *http.Request) {
	if !requireMethod(w, r, http.MethodPost) {
		return
	}
	var req tokenizeRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Model != nil && !s.checkModel(w, req.Model) {
		return
	}
	if req.Prompt == nil && len(req.Messages) == 0 {
		writeError(w, http.StatusBadRequest, "BadRequestError", "\"prompt\" or \"messages\" is required")
		return
	}
	var ids []int
	if req.Prompt != nil {
		ids = s.tok.Encode(*req.Prompt)
	} else {
		ids = s.tok.Encode(chatTemplate(req.Messages))
	}
	if ids == nil {
		ids = []int{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ids, "count": len(ids), "max_model_len": s.cfg.MaxModelLen})
}

type detokenizeRequest struct {
	Model  *string `json:"model"`
	Tokens []int   `json:"tokens"`
}

func (s *Server) handleDetokenize(w http.ResponseWriter, r *http.Request) {
	if !requireMethod(w, r, http.MethodPost) {
		return
	}
	var req detokenizeRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Model != nil && !s.checkModel(w, req.Model) {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"prompt": s.tok.Decode(req.Tokens)})
}
