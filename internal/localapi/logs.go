package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// DefaultLogTail is how many recent lines GET /v2/local/logs starts with.
const DefaultLogTail = 100

// keepAliveEvery is how often a quiet log stream gets an empty line.
const keepAliveEvery = 30 * time.Second

// LogQuery selects the lines of GET /v2/local/logs.
type LogQuery struct {
	Tail     int      // recent lines first; -1: the default
	Follow   bool     // then the lines that come, until the caller goes
	Services []string // only these services' lines (and the agent's about them)
	System   bool     // only the agent's own lines
}

func (q LogQuery) values() url.Values {
	v := url.Values{}
	if q.Tail >= 0 {
		v.Set("tail", strconv.Itoa(q.Tail))
	}
	v.Set("follow", strconv.FormatBool(q.Follow))
	for _, s := range q.Services {
		v.Add("service", s)
	}
	if q.System {
		v.Set("system", "true")
	}
	return v
}

func (q LogQuery) match(l reeve.LogLine) bool {
	if q.System && !l.System {
		return false
	}
	return len(q.Services) == 0 || slices.Contains(q.Services, l.Service)
}

func parseLogQuery(v url.Values) (LogQuery, error) {
	q := LogQuery{Tail: DefaultLogTail, Follow: true, Services: v["service"]}
	if s := v.Get("tail"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, reeve.Errorf(reeve.CodeInvalid, "tail %q: give a number of lines, 0 or more", s)
		}
		q.Tail = n
	}
	for name, dst := range map[string]*bool{"follow": &q.Follow, "system": &q.System} {
		if s := v.Get(name); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return q, reeve.Errorf(reeve.CodeInvalid, "%s %q: give true or false", name, s)
			}
			*dst = b
		}
	}
	return q, nil
}

// logs serves GET /v2/local/logs: NDJSON, the recent lines the agent
// keeps in memory, then (follow, the default) the lines as they come.
func (s *Server) logs(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.opts.Logs == nil {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeUnavailable, "this agent keeps no log view"))
		return
	}
	q, err := parseLogQuery(r.URL.Query())
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	recent, f := s.opts.Logs.Follow(-1)
	defer f.Close()
	var shown []reeve.LogLine
	for _, l := range recent {
		if q.match(l) {
			shown = append(shown, l)
		}
	}
	shown = shown[len(shown)-min(q.Tail, len(shown)):]
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for _, l := range shown {
		if enc.Encode(l) != nil {
			return
		}
	}
	if rc.Flush() != nil || !q.Follow {
		return
	}
	keepAlive := time.NewTicker(keepAliveEvery)
	defer keepAlive.Stop()
	for {
		select {
		case l, ok := <-f.Lines:
			if !ok {
				if f.Lagged() {
					_ = enc.Encode(reeve.LogLine{Timestamp: time.Now(), System: true,
						Message: "this log stream fell behind and was ended: follow again"})
				}
				return
			}
			for more := true; more; {
				if q.match(l) && enc.Encode(l) != nil {
					return
				}
				select {
				case l, more = <-f.Lines:
				default:
					more = false
				}
			}
		case <-keepAlive.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// Logs reads the agent's log (GET /v2/local/logs) and calls fn with each
// line until the stream ends (not following), ctx ends or fn fails.
func (c *Client) Logs(ctx context.Context, q LogQuery, fn func(reeve.LogLine) error) error {
	req, err := c.newRequest(ctx, http.MethodGet, "/v2/local/logs?"+q.values().Encode(), nil)
	if err != nil {
		return err
	}
	hc := *c.http
	hc.Timeout = 0 // a followed stream lasts
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the agent at %s: %w (is `reeve agent` running? pick another with --device)", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return httpx.DecodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue // keep-alive
		}
		var l reeve.LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("read the agent's log: %w", err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("read the agent's log: %w", err)
	}
	return ctx.Err()
}
