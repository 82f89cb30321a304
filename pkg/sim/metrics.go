package sim

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
)

// handleMetrics serves the scheduler's state in Prometheus text under the real servers'
// names: vLLM's /metrics (always on) and SGLang's (--enable-metrics). The sim never
// preempts, so vLLM's preemption counter stays 0, as it does on a server with room (unless
// --sim-fault metrics-lie makes the page lie).
func (s *Server) handleMetrics(w http.ResponseWriter, _ *http.Request) {
	st := &s.eng.stats
	model := strconv.Quote(s.cfg.ServedModel)
	kv := math.Float64frombits(st.kvUsage.Load())
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	line := func(name, typ, help string, v float64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s{model_name=%s} %s\n", name, help, name, typ, name, model, strconv.FormatFloat(v, 'g', -1, 64))
	}
	running, waiting := float64(st.running.Load()), float64(st.waiting.Load())
	prompt, gen := float64(st.promptTokens.Load()), float64(st.genTokens.Load())
	preempted := 0.0
	if s.cfg.Fault == FaultMetricsLie {
		gen *= 2
		preempted = float64(st.admitted.Load())
	}
	if s.cfg.Flavor == FlavorSGLang {
		line("sglang:num_running_reqs", "gauge", "The number of running requests.", running)
		line("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", waiting)
		line("sglang:token_usage", "gauge", "The token usage.", kv)
		line("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.", prompt)
		line("sglang:generation_tokens_total", "counter", "Number of generation tokens processed.", gen)
		return
	}
	line("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", running)
	line("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", waiting)
	line("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv)
	line("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", preempted)
	line("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", prompt)
	line("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", gen)
}
