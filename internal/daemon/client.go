package daemon

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
	"net/url"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/nodelock"
)

// EnvServer names the daemon for the CLI clients when --server is not given.
const EnvServer = "MOECAPD_SERVER"

// Client is the CLI's side of the API.
type Client struct {
	base  string
	hc    *http.Client
	token string
	where string
}

// NewClient finds the daemon: server ("unix:PATH" or an http(s) URL), else $MOECAPD_SERVER,
// else the default socket. token (may be "") is sent as a bearer token.
func NewClient(server, token string) (*Client, error) {
	if server == "" {
		server = "unix:" + nodelock.DefaultSocket()
	}
	c := &Client{token: token, where: server}
	if p, ok := strings.CutPrefix(server, "unix:"); ok {
		c.base = "http://moecapd"
		c.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p)
		}}}
		return c, nil
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, exitcode.Usagef("--server %q: want unix:PATH or http(s)://HOST:PORT", server)
	}
	c.base = strings.TrimRight(server, "/")
	c.hc = &http.Client{}
	return c, nil
}

// APIError is the daemon's refusal: the status and its reason.
type APIError struct {
	Status int
	Reason string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("the daemon refused (HTTP %d): %s", e.Status, e.Reason)
}

func (c *Client) req(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, exitcode.Usagef("no moecapd daemon answers at %s (%v); start one with moecapd serve, or point --server / %s at it", c.where, err, EnvServer)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error string `json:"error"`
		}
		reason := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			reason = e.Error
		}
		k := exitcode.Usage
		if resp.StatusCode >= 500 {
			k = exitcode.Internal
		}
		return nil, exitcode.New(k, &APIError{resp.StatusCode, reason})
	}
	return resp, nil
}

// maxAnswer bounds a JSON answer of the daemon (a queue of thousands of jobs is a few MB).
const maxAnswer = 256 << 20

// Call does one request and decodes the JSON answer into out.
func (c *Client) Call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.req(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	// Bounded: --server may name something that is not a moecapd daemon.
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		return exitcode.Errorf(exitcode.Usage, "the daemon's answer to %s %s (at most %d MiB is read): %v; is %s a moecapd daemon?", method, path, maxAnswer>>20, err, c.where)
	}
	return nil
}

// Submit submits a job and returns it as the daemon wrote it.
func (c *Client) Submit(ctx context.Context, s Spec) (*Job, error) {
	var out struct{ Job *Job }
	if err := c.Call(ctx, "POST", "/v1/jobs", s, &out); err != nil {
		return nil, err
	}
	return out.Job, nil
}

// Jobs lists the jobs.
func (c *Client) Jobs(ctx context.Context) ([]JobView, error) {
	var out struct{ Jobs []JobView }
	err := c.Call(ctx, "GET", "/v1/jobs", nil, &out)
	return out.Jobs, err
}

// Job is one job and its cells.
func (c *Client) Job(ctx context.Context, id string) (JobView, []Cell, error) {
	var out struct {
		Job   JobView
		Cells []Cell
	}
	err := c.Call(ctx, "GET", "/v1/jobs/"+url.PathEscape(id), nil, &out)
	return out.Job, out.Cells, err
}

// Cancel cancels a job.
func (c *Client) Cancel(ctx context.Context, id string) (*Job, error) {
	var out struct{ Job *Job }
	err := c.Call(ctx, "DELETE", "/v1/jobs/"+url.PathEscape(id), nil, &out)
	return out.Job, err
}

// Logs copies a cell's log to w; follow keeps going while the cell is live.
func (c *Client) Logs(ctx context.Context, cellID, file string, follow bool, w io.Writer) error {
	q := url.Values{"file": {file}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.req(ctx, "GET", "/v1/cells/"+url.PathEscape(cellID)+"/log?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Events reads /v1/events until ctx ends, calling f per event.
func (c *Client) Events(ctx context.Context, f func(Event)) error {
	resp, err := c.req(ctx, "GET", "/v1/events", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20) // an event with a long reason is more than 64 KiB
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var e Event
			if json.Unmarshal([]byte(d), &e) == nil {
				f(e)
			}
		}
	}
	return sc.Err()
}

var _ = time.Second
