package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// The native client's limits: every request, every silence, the whole bench, every line and
// every body it buffers is bounded, so a server that stalls, never answers, ignores
// max_tokens or streams an endless line ends the request (and the cell) with a reason instead
// of holding it for hours or exhausting the supervisor's memory.
const (
	// DefaultRequestTimeout bounds one request, send to last byte. A 13k-1k request at batch
	// 128 on a slow node (minutes of queued prefill, 1k decode steps of ~0.2 s) ends well
	// within it.
	DefaultRequestTimeout = 30 * time.Minute
	// DefaultIdleTimeout bounds a silence: no byte (not even the headers) from the server for
	// this long fails the request. It must exceed the longest prefill a request may wait for
	// (a batch of 13k-token prompts on a slow node: a few minutes).
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultBenchTimeout bounds the whole bench of a cell (warm-up, measured requests, the
	// records dump): 1000 13k-1k requests at batch 1 on a slow node (~1 min each) fit.
	DefaultBenchTimeout = 24 * time.Hour

	// MaxLineBytes is the longest SSE line the client buffers. One chunk carries one token
	// (or a usage block): a few hundred bytes.
	MaxLineBytes = 1 << 20
	// maxErrorBody is how much of an error reply is read for its message.
	maxErrorBody = 64 << 10
)

// tokenMargin is how many streamed chunks (or usage tokens) beyond max_tokens a server may
// send before it is said to ignore max_tokens: the final finish_reason chunk, a detokenizer
// that splits a token, 10 % slack.
func tokenMargin(maxTokens int) int { return 16 + maxTokens/10 }

// maxStreamBytes bounds one streamed reply: the chunks max_tokens allows (with margin), each
// a line of at most a few kB, plus room for keep-alive comments and the usage chunk.
func maxStreamBytes(maxTokens int) int64 {
	return 4<<20 + int64(maxTokens+tokenMargin(maxTokens))*16<<10
}

// maxReplyBytes bounds one non-streaming reply: the text of max_tokens tokens (JSON-escaped,
// a few bytes each), plus the envelope.
func maxReplyBytes(maxTokens int) int64 {
	return 1<<20 + int64(maxTokens+tokenMargin(maxTokens))*1<<10
}

// Failure kinds of a request that the limits end (keys counted in Metrics.Errors).
const (
	KindRequestTimeout = "timeout"
	KindIdleTimeout    = "idle timeout"
	KindProtocolError  = "server protocol error"
	KindServerError    = "server error"
)

// ErrBenchDeadline is the cause when the bench deadline (Options.BenchTimeout) ends a
// bench; Run's error wraps it.
var ErrBenchDeadline = errors.New("bench deadline passed")

// idleWatch cancels a request when the server sends no byte for d: from the send until the
// headers, and between any two reads of the body.
type idleWatch struct {
	d  time.Duration
	t  *time.Timer
	mu sync.Mutex
}

// watchIdle starts the watch; cancel gets a failure naming the limit when it fires.
func watchIdle(d time.Duration, cancel context.CancelCauseFunc) *idleWatch {
	w := &idleWatch{d: d}
	w.t = time.AfterFunc(d, func() {
		cancel(fail(KindIdleTimeout, "the server sent no byte for %s (--idle-timeout): it stalled", d))
	})
	return w
}

// touch pushes the deadline back: bytes arrived.
func (w *idleWatch) touch() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.t.Reset(w.d)
	w.mu.Unlock()
}

func (w *idleWatch) stop() {
	if w != nil {
		w.t.Stop()
	}
}

// idleReader touches the watch on every read that returned bytes.
type idleReader struct {
	r io.Reader
	w *idleWatch
}

func (ir idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.w.touch()
	}
	return n, err
}

// limitedReader is io.LimitReader that says it ran out: past n bytes Read returns
// errTooLong, so an over-long reply is a protocol error, not a silently cut one.
type limitedReader struct {
	r io.Reader
	n int64
}

var errTooLong = errors.New("reply exceeds its size limit")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errTooLong
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// serverMessage is the message of an error reply in the shapes OpenAI-compatible servers
// use ({"error":{"message":…}}, {"error":"…"}, vLLM's {"object":"error","message":…},
// FastAPI's {"detail":…}); "" when body is none of them.
func serverMessage(body []byte) string {
	var v struct {
		Object  string          `json:"object"`
		Message json.RawMessage `json:"message"`
		Detail  json.RawMessage `json:"detail"`
		Error   json.RawMessage `json:"error"`
	}
	if json.Unmarshal(bytes.TrimSpace(body), &v) != nil {
		return ""
	}
	str := func(raw json.RawMessage) string {
		if len(raw) == 0 || bytes.Equal(raw, nullJSON) {
			return ""
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		var o struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(raw, &o) == nil && o.Message != "" {
			return o.Message
		}
		return string(raw)
	}
	for _, m := range []string{str(v.Error), str(v.Message), str(v.Detail)} {
		if m != "" {
			return clip(m, 500)
		}
	}
	if v.Object == "error" {
		return "an error reply without a message"
	}
	return ""
}

// clip shortens s to at most n bytes, saying so.
func clip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// errorReply is the failure for a 200 reply whose body is an error, not a completion; nil
// when body is no error reply.
func errorReply(body []byte) *requestFailure {
	if m := serverMessage(body); m != "" {
		return fail(KindServerError, "HTTP 200 with an error body: %s", m)
	}
	return nil
}

// benchDeadline bounds ctx by the bench deadline d; the cause names it.
func benchDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d, fmt.Errorf("%w: the bench ran for %s (--bench-timeout)", ErrBenchDeadline, d))
}
