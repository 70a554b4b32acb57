package serverapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// maxServedLogLine bounds a line the server serves: a message of
// reeve.MaxLogLineBytes JSON-escaped, with room to spare.
const maxServedLogLine = 1 << 20

// streaming returns the client's HTTP client without its timeout: a
// stream lasts as long as its context lets it.
func (c *Client) streaming() *http.Client {
	hc := *c.http
	hc.Timeout = 0
	return &hc
}

// LogStream sends a device's log lines: POST /device/v2/{uuid}/log-stream
// with the device's key. body is newline-delimited JSON, one reeve.LogLine
// an object (gzip-compressed when gzipped), and may be written while the
// request runs (an io.Pipe): it goes out with chunked encoding, the server
// stores lines as they arrive, and the request lasts until body ends (or
// ctx does: the client's timeout does not apply). stream names the
// agent's log stream ("" for none: the lines are never de-duplicated).
//
// The answer comes once body has ended; an error answer may come before,
// when a line is refused (the lines before it are stored).
func (c *Client) LogStream(ctx context.Context, uuid, stream string, body io.Reader, gzipped bool) (LogAck, error) {
	path := "/device/v2/" + url.PathEscape(uuid) + "/log-stream"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, body)
	if err != nil {
		return LogAck{}, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength == 0 {
		req.ContentLength = -1 // unknown: chunked, without probing the body first
	}
	req.Header.Set("Content-Type", NDJSON)
	if gzipped {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if stream != "" {
		req.Header.Set(LogStreamHeader, stream)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.streaming().Do(req)
	if err != nil {
		return LogAck{}, fmt.Errorf("send log lines to the fleet server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return LogAck{}, fmt.Errorf("send log lines: %w", httpx.DecodeError(resp))
	}
	var ack LogAck
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ack); err != nil {
		return LogAck{}, fmt.Errorf("read the answer to the log lines sent: %w", err)
	}
	return ack, nil
}

// Logs reads a device's log: GET /api/v1/devices/{uuid}/logs. fn gets
// each line in the order stored; an error from it ends the read and is
// returned. With q.Follow the read goes on (the client's timeout does not
// apply) until ctx ends, which returns ctx's error, or the server ends it
// (shutting down, the device removed), which returns nil.
func (c *Client) Logs(ctx context.Context, uuid string, q LogQuery, fn func(reeve.LogLine) error) error {
	path := devicePath(uuid, "/logs")
	if v := q.values().Encode(); v != "" {
		path += "?" + v
	}
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", NDJSON)
	hc := c.http
	if q.Follow {
		hc = c.streaming()
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the fleet server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return httpx.DecodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxServedLogLine)
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue // keep-alive
		}
		var l reeve.LogLine
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("read logs of device %s: the server sent a line that is not a log line: %w", uuid, err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("read logs of device %s: %w", uuid, err)
	}
	return ctx.Err()
}
