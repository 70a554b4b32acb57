// Package serverapi is the fleet server's HTTP API: the device API agents
// use and the operator API the CLI uses, with typed clients for both.
package serverapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"reeve.dev/reeve/internal/httpx"
)

// Client talks to a fleet server with one bearer credential: an operator
// token for the operator API, a device key or provisioning key for the
// device API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for the server at base ("host:port" or a URL)
// that sends token as its bearer credential. A nil hc uses a client with a
// 30 s timeout; long polls need one without (pass their own).
func NewClient(base, token string, hc *http.Client) *Client {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Client{base: strings.TrimRight(base, "/"), token: token, http: hc}
}

// BaseURL returns the server's URL.
func (c *Client) BaseURL() string { return c.base }

// WithToken returns a client for the same server with another credential.
func (c *Client) WithToken(token string) *Client {
	cc := *c
	cc.token = token
	return &cc
}

// newRequest builds a request with the credential and a JSON body.
func (c *Client) newRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var rd io.Reader = http.NoBody
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
	return req, nil
}

// do sends a JSON request and decodes a JSON answer into out (when not
// nil). An error answer becomes the server's *reeve.Error.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	_, err := c.doStatus(ctx, method, path, body, out)
	return err
}

// doStatus is do that also returns the status of a successful answer, for
// routes whose status carries meaning (201 created, 200 existed).
func (c *Client) doStatus(ctx context.Context, method, path string, body, out any) (int, error) {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("cannot reach the fleet server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return resp.StatusCode, httpx.DecodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return resp.StatusCode, fmt.Errorf("read answer of %s %s: %w", method, path, err)
	}
	return resp.StatusCode, nil
}
