package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// DefaultAddress is where the agent's API listens unless told otherwise.
const DefaultAddress = "127.0.0.1:48484"

// Client talks to an agent's local API.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the agent at addr ("host:port" or a URL).
func NewClient(addr string) *Client {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return &Client{base: strings.TrimRight(addr, "/"), http: &http.Client{Timeout: 30 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the agent at %s: %w (is `reeve agent` running? pick another with --device)", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return httpx.DecodeError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("read answer of %s %s: %w", method, path, err)
	}
	return nil
}

// DeviceInfo returns the device's identity.
func (c *Client) DeviceInfo(ctx context.Context) (DeviceInfo, error) {
	var out DeviceInfo
	err := c.do(ctx, http.MethodGet, "/v2/local/device-info", nil, &out)
	return out, err
}

// Target returns the target state and its version.
func (c *Client) Target(ctx context.Context) (reeve.TargetState, int64, error) {
	var out TargetResponse
	err := c.do(ctx, http.MethodGet, "/v2/local/target-state", nil, &out)
	return out.State, out.Version, err
}

// SetTarget sets the target state (local mode) and returns its version.
func (c *Client) SetTarget(ctx context.Context, ts reeve.TargetState) (int64, error) {
	var out SetTargetResponse
	err := c.do(ctx, http.MethodPost, "/v2/local/target-state", ts, &out)
	return out.Version, err
}

// Status returns what the agent is doing.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) {
	var out StatusResponse
	err := c.do(ctx, http.MethodGet, "/v2/state/status", nil, &out)
	return out, err
}
