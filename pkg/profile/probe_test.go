package profile

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
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
