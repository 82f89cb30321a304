package profile

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// chunkLine is one SSE completion chunk carrying one token.
const chunkLine = `data: {"choices":[{"index":0,"text":"x"}]}` + "\n\n"

// hostile serves handler at /v1/completions; everything else is 404 (no version, no
// records, no models: the client must cope).
func hostile(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		// A read body lets the server notice the client leaving (r.Context() ends).
		io.Copy(io.Discard, r.Body)
		handler(w, r)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL + "/v1/completions"
}

// sse starts an event stream.
func sse(w http.ResponseWriter) *http.ResponseController {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	return rc
}

// until keeps calling step (a write) until the client is gone or step fails.
func until(r *http.Request, step func() error) {
	for r.Context().Err() == nil {
		if step() != nil {
			return
		}
	}
}

func hostileOptions(url string) Options {
	return Options{
		APIURL: url, Model: "org/model", Backend: "vllm", BatchSize: 2, NumSamples: 2,
		InputTokens: 8, OutputTokens: 16, IgnoreEOS: true, Dataset: "random", NoRecords: true,
		ProgressInterval: time.Hour,
		// Generous bounds: each case must end by its own limit, well before these.
		RequestTimeout: time.Minute, IdleTimeout: time.Minute, BenchTimeout: 2 * time.Minute,
	}
}

// Every misbehaving server ends its requests by the limit it breaks, with the reason and
// what the server said, and the run fails (no request succeeded) naming it.
func TestHostileServers(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		set     func(*Options)
		kind    string
		msg     string
	}{
		{"stall mid-stream", func(w http.ResponseWriter, r *http.Request) {
			rc := sse(w)
			fmt.Fprint(w, chunkLine+chunkLine)
			rc.Flush()
			<-r.Context().Done()
		}, func(o *Options) { o.IdleTimeout = 300 * time.Millisecond }, KindIdleTimeout, "no byte for 300ms"},
		{"no headers", func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}, func(o *Options) { o.IdleTimeout = 300 * time.Millisecond }, KindIdleTimeout, "--idle-timeout"},
		{"slow drip past the request limit", func(w http.ResponseWriter, r *http.Request) {
			rc := sse(w)
			until(r, func() error {
				time.Sleep(50 * time.Millisecond)
				_, err := fmt.Fprint(w, ": keep-alive\n\n")
				rc.Flush()
				return err
			})
		}, func(o *Options) { o.RequestTimeout = 500 * time.Millisecond }, KindRequestTimeout, "--request-timeout"},
		{"ignores max_tokens", func(w http.ResponseWriter, r *http.Request) {
			rc := sse(w)
			until(r, func() error {
				_, err := fmt.Fprint(w, strings.Repeat(chunkLine, 64))
				rc.Flush()
				return err
			})
		}, nil, KindProtocolError, "ignores max_tokens"},
		{"endless line", func(w http.ResponseWriter, r *http.Request) {
			rc := sse(w)
			fmt.Fprint(w, "data: ")
			junk := strings.Repeat("x", 32<<10)
			until(r, func() error {
				_, err := fmt.Fprint(w, junk)
				rc.Flush()
				return err
			})
		}, nil, KindProtocolError, "without a newline"},
		{"endless comments", func(w http.ResponseWriter, r *http.Request) {
			rc := sse(w)
			junk := strings.Repeat(": ping\n", 4<<10)
			until(r, func() error {
				_, err := fmt.Fprint(w, junk)
				rc.Flush()
				return err
			})
		}, nil, KindProtocolError, "exceeded"},
		{"200 with a JSON error body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"object":"error","message":"KV cache exhausted, retry later","type":"ServiceUnavailable","code":503}`)
		}, nil, KindServerError, "KV cache exhausted, retry later"},
		{"200 with an error body as the stream", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, `{"error":{"message":"model is loading"}}`)
		}, nil, KindServerError, "model is loading"},
		{"error chunk in the stream", func(w http.ResponseWriter, r *http.Request) {
			sse(w)
			fmt.Fprint(w, chunkLine+`data: {"error":{"message":"CUDA error: device-side assert"}}`+"\n\n")
		}, nil, "server error in stream", "device-side assert"},
		{"200 with an HTML page", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>proxy login</body></html>\n")
		}, nil, KindProtocolError, "holds no data: line"},
		{"closes mid-chunk", func(w http.ResponseWriter, r *http.Request) {
			rc := sse(w)
			fmt.Fprint(w, chunkLine+`data: {"choices":[{"index":0,"te`)
			rc.Flush()
			// Gone without the terminating zero-length chunk: the client's body read fails.
			conn, _, err := rc.Hijack()
			if err == nil {
				conn.Close()
			}
		}, nil, "connection reset", "closed the connection mid-request"},
		{"closes mid-line after a plain body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Content-Length", "76")
			fmt.Fprint(w, chunkLine+`data: {"choices":[{"index":0,"te`)
		}, nil, "truncated stream", "ended inside chunk 2"},
		{"503 with a JSON message", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"detail":"server overloaded"}`)
		}, nil, "http 503", "server overloaded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := hostileOptions(hostile(t, tt.handler))
			if tt.set != nil {
				tt.set(&o)
			}
			res, err := Run(t.Context(), o)
			if !errors.Is(err, ErrNoSuccess) {
				t.Fatalf("Run: %v, want ErrNoSuccess", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not carry %q", err, tt.msg)
			}
			for _, r := range res.Requests {
				if r.Success || r.ErrorKind != tt.kind || !strings.Contains(r.Error, tt.msg) {
					t.Errorf("request %d: success=%v kind=%q error=%q, want kind %q with %q", r.Index, r.Success, r.ErrorKind, r.Error, tt.kind, tt.msg)
				}
			}
		})
	}
}

// The bench deadline ends a run whose requests each stay within their own limits, with
// what was measured kept and the error naming the deadline.
func TestBenchDeadline(t *testing.T) {
	url := hostile(t, func(w http.ResponseWriter, r *http.Request) {
		rc := sse(w)
		for range 16 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(40 * time.Millisecond):
			}
			fmt.Fprint(w, chunkLine)
			rc.Flush()
		}
		fmt.Fprint(w, `data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":16}}`+"\n\ndata: [DONE]\n\n")
	})
	o := hostileOptions(url)
	o.NumSamples, o.BatchSize = 1000, 1
	o.BenchTimeout, o.DrainTimeout = 1500*time.Millisecond, 100*time.Millisecond
	res, err := Run(t.Context(), o)
	if !errors.Is(err, ErrBenchDeadline) || !strings.Contains(err.Error(), "--bench-timeout") {
		t.Fatalf("Run: %v, want the bench deadline", err)
	}
	if res == nil || !res.Metrics.Partial || len(res.Requests) >= 1000 {
		t.Fatalf("result %+v: want a partial result of fewer than 1000 requests", res)
	}
}

// The upstream prompt style against a server that cannot tokenize chat messages or
// detokenize names what to do for that style, never a flag nobody passed.
func TestUpstreamStyleNamesItsOwnFix(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain"})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.PromptStyle = "vllm", true, PromptUpstream
	_, err := Run(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), "--prompt-style exact-ids") || strings.Contains(err.Error(), "use-chat-api") {
		t.Errorf("err = %v, want the fix --prompt-style exact-ids and no --use-chat-api", err)
	}
}

// A usage with a negative token count is a usage that cannot be trusted: the request is
// marked (and the result invalid), never summed into negative totals silently.
func TestNegativeUsageIsAMismatch(t *testing.T) {
	body := chunkLine + chunkLine + `data: {"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":2}}` + "\n\ndata: [DONE]\n\n"
	s := &streamer{hc: &http.Client{Transport: bodyTransport{[]byte(body)}}, url: "http://x/v1/completions", maxTokens: 4, idle: time.Minute}
	var r RequestResult
	s.do(t.Context(), []byte("{}"), &r)
	if !r.Success || !r.UsageStreamMismatch {
		t.Errorf("success %v mismatch %v (%s): want a success marked as a usage mismatch", r.Success, r.UsageStreamMismatch, r.Error)
	}
}
