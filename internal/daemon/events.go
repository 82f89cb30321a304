package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
)

// Event is one change the daemon announces on /v1/events.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Type   string    `json:"type"` // job, cell
	Job    string    `json:"job"`
	Cell   string    `json:"cell,omitempty"`
	State  string    `json:"state,omitempty"`
	Phase  string    `json:"phase,omitempty"`
	GPUs   []string  `json:"gpus,omitempty"`
	Reason string    `json:"reason,omitempty"`
	// Progress is a running cell's bench (type "cell", phase bench).
	Progress *Progress `json:"progress,omitempty"`
}

// hub fans events out to the SSE clients; a slow client loses events (it re-reads the
// state), never blocks a cell.
type hub struct {
	mu   sync.Mutex
	seq  uint64
	subs map[chan Event]bool
}

func newHub() *hub { return &hub{subs: map[chan Event]bool{}} }

func (h *hub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	e.Seq, e.Time = h.seq, time.Now().UTC()
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

func (h *hub) subscribe() (chan Event, func()) {
	ch := make(chan Event, 256)
	h.mu.Lock()
	h.subs[ch] = true
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// notifier posts Slack-compatible messages ({"text": ...}) to a webhook from its own
// goroutine, retried with backoff; a full queue drops the message (logged), so nothing a
// cell does waits on it.
type notifier struct {
	url string
	ch  chan string
	log *zap.Logger
}

func newNotifier(url string, log *zap.Logger) *notifier {
	n := &notifier{url: url, log: log}
	if url == "" {
		return n
	}
	n.ch = make(chan string, 128)
	c := retryablehttp.NewClient()
	c.RetryMax, c.RetryWaitMin, c.RetryWaitMax = 5, 200*time.Millisecond, 10*time.Second
	c.Logger = nil
	go func() {
		for text := range n.ch {
			b, _ := json.Marshal(map[string]string{"text": text})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			req, err := retryablehttp.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(b))
			if err == nil {
				req.Header.Set("Content-Type", "application/json")
				var resp interface{ Close() error }
				r, derr := c.Do(req)
				if r != nil {
					resp = r.Body
					resp.Close()
				}
				err = derr
			}
			cancel()
			if err != nil {
				log.Warn("webhook notification failed", zap.Error(err))
			}
		}
	}()
	return n
}

func (n *notifier) send(text string) {
	if n.ch == nil {
		return
	}
	select {
	case n.ch <- text:
	default:
		n.log.Warn("webhook queue full; notification dropped", zap.String("text", text))
	}
}
