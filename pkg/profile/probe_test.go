package profile

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// Needs asks only what the prompts need: /tokenize for dataset text and the upstream style,
// /detokenize for the upstream style and the chat API.
func TestNeeds(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want []string
	}{
		{Options{Dataset: "random", PromptStyle: PromptExactIDs}, nil},
		{Options{Dataset: "gsm8k", PromptStyle: PromptExactIDs}, []string{"/tokenize"}},
		{Options{Dataset: "random", PromptStyle: PromptExactIDs, UseChatAPI: true}, []string{"/detokenize"}},
		{Options{Dataset: "random", PromptStyle: PromptUpstream}, []string{"/tokenize", "/detokenize"}},
	} {
		if got := Needs(tc.o); !slices.Equal(got, tc.want) {
			t.Errorf("Needs(%s, %s, chat %v) = %v, want %v", tc.o.Dataset, tc.o.PromptStyle, tc.o.UseChatAPI, got, tc.want)
		}
	}
}

// Probe names the endpoint a real HTTP server lacks, with the fix of the options' mode.
func TestProbeNamesMissingEndpoint(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		switch {
		case r.URL.Path == "/tokenize" && body["prompt"] != nil:
			w.Write([]byte(`{"tokens":[1,2],"count":2}`))
		case r.URL.Path == "/tokenize":
			http.Error(w, "no chat template", http.StatusBadRequest) // a tokenizer without one
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	o := Options{APIURL: srv.URL + "/v1/completions", Model: "m", Dataset: "random", PromptStyle: PromptExactIDs, UseChatAPI: true}
	err := Probe(context.Background(), o)
	var le *LacksError
	if !errors.Is(err, ErrServerLacks) || !errors.As(err, &le) || le.URL != srv.URL+"/detokenize" || le.Status != 404 ||
		!strings.Contains(err.Error(), "drop --use-chat-api") {
		t.Fatalf("chat API: %v, want the missing /detokenize with the chat API's fix", err)
	}
	o.UseChatAPI, o.Dataset = false, "gsm8k"
	if err := Probe(context.Background(), o); err != nil {
		t.Errorf("exact ids of dataset text need only /tokenize, which it serves: %v", err)
	}
	o.PromptStyle = PromptUpstream
	if err := Probe(context.Background(), o); !errors.Is(err, ErrServerLacks) || !strings.Contains(err.Error(), "/tokenize (chat messages)") {
		t.Errorf("upstream: %v, want the chat template named", err)
	}
}

// A server that takes the connection and never answers /tokenize or /detokenize ends the
// probe within --request-timeout, the error naming the endpoint and the flag, instead of
// holding the bench until --bench-timeout (24 h by default).
func TestProbeSilentServerEndsByRequestTimeout(t *testing.T) {
	gone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // a read body lets the server notice the client leaving
		select {
		case <-r.Context().Done():
		case <-gone:
		}
	}))
	t.Cleanup(func() {
		close(gone)
		srv.CloseClientConnections()
		srv.Close()
	})
	for _, o := range []Options{
		{APIURL: srv.URL + "/v1/completions", Model: "m", Dataset: "gsm8k", PromptStyle: PromptExactIDs, RequestTimeout: 200 * time.Millisecond},
		{APIURL: srv.URL + "/v1/completions", Model: "m", Dataset: "random", PromptStyle: PromptExactIDs, UseChatAPI: true, RequestTimeout: 200 * time.Millisecond},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // 300× the bound: fails only if unbounded
		err := Probe(ctx, o)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "--request-timeout") || !strings.Contains(err.Error(), "gave no answer within 200ms") {
			t.Errorf("dataset %s, chat %v: %v; want the endpoint's silence named with --request-timeout", o.Dataset, o.UseChatAPI, err)
		}
	}
}
