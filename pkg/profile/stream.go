package profile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// RequestResult is one measured request, a row of moecapd's bench file.
type RequestResult struct {
	Index   int    `json:"index"`
	Success bool   `json:"success"`
	Error   string `json:"error,omitempty"`
	// ErrorKind is the reason key counted in Metrics.Errors ("http 503", "timeout",
	// "truncated stream", …).
	ErrorKind string `json:"error_kind,omitempty"`

	// InputTokens is the prompt length sent (token ids); PromptTokens and OutputTokens are
	// what the server's usage says it processed and generated.
	InputTokens           int  `json:"input_tokens"`
	PromptTokens          int  `json:"prompt_tokens"`
	OutputTokens          int  `json:"output_tokens"`
	RequestedOutputTokens int  `json:"requested_output_tokens"`
	Chunks                int  `json:"chunks"`
	UsageMissing          bool `json:"usage_missing,omitempty"`
	LengthMismatch        bool `json:"length_mismatch,omitempty"`
	// UsageStreamMismatch: the server's usage claims a different number of generated tokens
	// than the stream carried (more than the chunks it sent, or fewer than its text chunks).
	UsageStreamMismatch bool `json:"usage_stream_mismatch,omitempty"`
	// ShortOutput: fewer tokens generated than requested although ignore_eos was set.
	ShortOutput bool `json:"short_output,omitempty"`
	// OutputText is the generated text (output_data's output_tokens); not in the bench file.
	OutputText string `json:"-"`

	StartS float64   `json:"start_s"` // send time, seconds after the bench started
	TTFTMs float64   `json:"ttft_ms"`
	TPOTMs float64   `json:"tpot_ms"`
	E2ELMs float64   `json:"e2el_ms"`
	ITLMs  []float64 `json:"itl_ms,omitempty"`

	start time.Time
	ttft  time.Duration
	e2el  time.Duration
	itl   []time.Duration
}

// streamChunk is the part of an OpenAI streaming chunk the client reads. Completions put
// text in choices[].text, chat completions in choices[].delta.content.
type streamChunk struct {
	Choices []struct {
		Text  string `json:"text"`
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// requestFailure is a failed request: Kind is the short reason counted in Metrics.Errors,
// Msg the detail kept in the request's row.
type requestFailure struct{ Kind, Msg string }

func (f *requestFailure) Error() string { return f.Kind + ": " + f.Msg }

func fail(kind, format string, a ...any) *requestFailure {
	return &requestFailure{Kind: kind, Msg: fmt.Sprintf(format, a...)}
}

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// streamer sends one streaming completion and times its chunks.
type streamer struct {
	hc     *http.Client
	url    string
	apiKey string
	chunks *atomic.Int64 // streamed non-empty chunks, for the progress line
	// whole sends non-streaming requests (the upstream prompt style) instead of SSE.
	whole bool
	// idle fails a request after this long without a byte from the server (0: no limit).
	idle time.Duration
	// maxTokens is the max_tokens every request asks for: a reply beyond it (plus
	// tokenMargin) is a server protocol error. 0: unchecked.
	maxTokens int
}

// do sends body and fills r. reqCtx bounds the request (its deadline is the request timeout);
// a failure is returned and also recorded in r.
func (s *streamer) do(reqCtx context.Context, body []byte, r *RequestResult) {
	ctx, cancel := context.WithCancelCause(reqCtx)
	defer cancel(nil)
	var iw *idleWatch
	if s.idle > 0 {
		iw = watchIdle(s.idle, cancel)
		defer iw.stop()
	}
	var err error
	if s.whole {
		err = s.once(ctx, iw, body, r)
	} else {
		err = s.stream(ctx, iw, body, r)
	}
	if err == nil {
		r.Success = true
		return
	}
	var f *requestFailure
	if !errors.As(err, &f) {
		f = classify(ctx, err)
	}
	r.Success, r.ErrorKind, r.Error = false, f.Kind, f.Msg
}

// post sends one request (r.start is when it left) and returns the reply when it is 200 OK;
// any other status is a failure naming it. The caller closes the body.
func (s *streamer) post(ctx context.Context, iw *idleWatch, body []byte, accept string, r *RequestResult) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return nil, fail("bad request", "%v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if s.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+s.apiKey)
	}
	r.start = time.Now()
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	iw.touch() // the headers are bytes
	if iw != nil {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{idleReader{resp.Body, iw}, resp.Body}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		said := serverMessage(msg)
		if said == "" {
			said = clip(string(msg), 500)
		}
		return nil, fail(fmt.Sprintf("http %d", resp.StatusCode), "HTTP %s: %s", resp.Status, said)
	}
	return resp, nil
}

func (s *streamer) stream(ctx context.Context, iw *idleWatch, body []byte, r *RequestResult) error {
	resp, err := s.post(ctx, iw, body, "text/event-stream", r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/json") {
		// A 200 that is not a stream: an error reply (or a server that ignores "stream").
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		r.e2el = time.Since(r.start)
		if f := errorReply(b); f != nil {
			return f
		}
		return fail(KindProtocolError, "asked for a stream, the server replied with a JSON body (Content-Type %s): %.200q", ct, b)
	}
	limit := int64(-1)
	var src io.Reader = resp.Body
	if s.maxTokens > 0 {
		limit = maxStreamBytes(s.maxTokens)
		src = &limitedReader{r: resp.Body, n: limit}
	}

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(src)
	defer func() { br.Reset(nil); readerPool.Put(br) }()

	var (
		last     time.Time
		got      bool
		done     bool
		usage    bool
		long     []byte // a line longer than the reader's buffer, assembled
		chunk    streamChunk
		readErr  error
		nonEmpty int
		choice   int // chunks carrying a choice, empty text included
		text     strings.Builder
		payloads int    // data: lines seen
		other    []byte // the first bytes of lines that are not data: (an error body?)
	)
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
				if len(long) > MaxLineBytes {
					r.e2el = time.Since(r.start)
					return fail(KindProtocolError, "the server streamed a line longer than %d bytes without a newline (after %d chunks): not an SSE stream", MaxLineBytes, nonEmpty)
				}
			}
			line = long
		}
		if errors.Is(err, errTooLong) {
			r.e2el = time.Since(r.start)
			return fail(KindProtocolError, "the stream exceeded %d bytes after %d chunks, more than max_tokens=%d allows", limit, nonEmpty, s.maxTokens)
		}
		// Timestamp as soon as the bytes are here: parsing below must not count as latency.
		now := time.Now()
		// A last line without its newline: the connection ended inside it. Cut by a reset
		// or a chunked body that stopped mid-chunk, it is half a chunk, not a malformed
		// one: the read error says what happened.
		cut := err != nil && len(line) > 0 && line[len(line)-1] != '\n'
		if cut && err != io.EOF {
			readErr = err
			r.e2el = now.Sub(r.start)
			break
		}
		if len(line) > 0 {
			payload, ok := ssePayload(line)
			if !ok && payloads == 0 && len(other) < maxErrorBody {
				other = append(other, line[:min(len(line), maxErrorBody-len(other))]...)
			}
			if ok {
				payloads++
				if bytes.Equal(payload, doneMarker) {
					done = true
					r.e2el = now.Sub(r.start)
					break
				}
				chunk.Choices, chunk.Usage, chunk.Error = chunk.Choices[:0], nil, nil
				if jerr := json.Unmarshal(payload, &chunk); jerr != nil {
					if cut {
						return fail("truncated stream", "the stream ended inside chunk %d (its line has no newline and is not JSON): %.120q", nonEmpty+1, payload)
					}
					return fail("malformed stream", "chunk %d is not JSON: %v: %.120q", nonEmpty+1, jerr, payload)
				}
				if len(chunk.Error) > 0 && !bytes.Equal(chunk.Error, nullJSON) {
					msg := serverMessage(payload)
					if msg == "" {
						msg = clip(string(chunk.Error), 300)
					}
					return fail("server error in stream", "%s", msg)
				}
				if chunk.Usage != nil {
					usage = true
					r.PromptTokens, r.OutputTokens = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens
				}
				if len(chunk.Choices) > 0 {
					choice++
					if s.maxTokens > 0 && choice > s.maxTokens+tokenMargin(s.maxTokens) {
						r.e2el = now.Sub(r.start)
						return fail(KindProtocolError, "the server streamed more than %d chunks for max_tokens=%d: it ignores max_tokens (stream cut off)", s.maxTokens+tokenMargin(s.maxTokens), s.maxTokens)
					}
				}
				if len(chunk.Choices) > 0 && (chunk.Choices[0].Text != "" || chunk.Choices[0].Delta.Content != "") {
					text.WriteString(chunk.Choices[0].Text)
					text.WriteString(chunk.Choices[0].Delta.Content)
					if !got {
						r.ttft = now.Sub(r.start)
						got = true
					} else {
						r.itl = append(r.itl, now.Sub(last))
					}
					last = now
					nonEmpty++
					if s.chunks != nil {
						s.chunks.Add(1)
					}
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				readErr = err
			}
			r.e2el = now.Sub(r.start)
			break
		}
	}
	r.Chunks = nonEmpty
	r.OutputText = text.String()
	if readErr != nil {
		return readErr
	}
	if !done && payloads == 0 {
		if f := errorReply(other); f != nil {
			return f
		}
		if len(bytes.TrimSpace(other)) > 0 {
			// An HTML error page, a proxy's login page, plain text: a 200 that is no stream.
			return fail(KindProtocolError, "asked for a stream, the server replied 200 with a body that holds no data: line (Content-Type %q): %.200q; is %s the inference server's completions endpoint?", resp.Header.Get("Content-Type"), bytes.TrimSpace(other), s.url)
		}
	}
	if !done {
		return fail("truncated stream", "the stream ended after %d chunks without data: [DONE]", nonEmpty)
	}
	if !got {
		return fail("no output", "the server streamed no text (usage completion_tokens=%d)", r.OutputTokens)
	}
	if !usage {
		// vLLM's client falls back the same way; the count is then chunks, not tokens.
		r.UsageMissing = true
		r.OutputTokens = nonEmpty
		r.PromptTokens = r.InputTokens
		return nil
	}
	// Both engines stream one chunk per generated token (stream interval 1), though a
	// detokenizer may hold back a token that ends inside a multi-byte character. A usage
	// below the chunks that carried text, or more than 10% (+1) above the chunks sent, is a
	// server whose counts cannot be trusted or a stream that lost chunks.
	if r.OutputTokens < nonEmpty || r.OutputTokens > choice+choice/10+1 || r.PromptTokens < 0 {
		r.UsageStreamMismatch = true
	}
	return nil
}

var (
	doneMarker = []byte("[DONE]")
	nullJSON   = []byte("null")
	dataPrefix = []byte("data:")
)

// ssePayload returns the data of an SSE "data:" line. Other SSE lines (comments, event:,
// id:, blank separators) carry nothing the client needs.
func ssePayload(line []byte) ([]byte, bool) {
	line = bytes.TrimRight(line, "\r\n")
	if !bytes.HasPrefix(line, dataPrefix) {
		return nil, false
	}
	p := bytes.TrimSpace(line[len(dataPrefix):])
	return p, len(p) > 0
}

// classify turns a transport error into a reason key.
func classify(reqCtx context.Context, err error) *requestFailure {
	msg := err.Error()
	var f *requestFailure
	if errors.As(context.Cause(reqCtx), &f) {
		return f // a limit of the client's (idle, request timeout) ended it
	}
	switch {
	case errors.Is(reqCtx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return &requestFailure{"timeout", "no complete response within the request timeout: " + msg}
	case errors.Is(err, context.Canceled) || errors.Is(reqCtx.Err(), context.Canceled):
		return &requestFailure{"interrupted", "stopped by the caller before it finished: " + msg}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &requestFailure{"connection refused", "the server is not listening (did it exit?): " + msg}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return &requestFailure{"connection reset", "the server closed the connection mid-request: " + msg}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &requestFailure{"timeout", msg}
	}
	return &requestFailure{"transport error", msg}
}
