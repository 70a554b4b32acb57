package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// DefaultAddress is where the agent's API listens unless told otherwise.
const DefaultAddress = "127.0.0.1:48484"

// Client talks to an agent's local API.
type Client struct {
	base    string
	key     string
	keyFrom string // data directory to read the key from at each request
	http    *http.Client
}

// NewClient returns a client for the agent at addr ("host:port" or a URL).
func NewClient(addr string) *Client {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return &Client{base: strings.TrimRight(addr, "/"), http: &http.Client{Timeout: 30 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
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

// newRequest makes a request with body as JSON and the client's key.
func (c *Client) newRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	key := c.key
	if key == "" && c.keyFrom != "" {
		if key, err = ReadKeyFile(c.keyFrom); err != nil {
			return nil, err
		}
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return req, nil
}

// WithKey returns a client that sends key, the agent's API key (the
// device-wide one, or an app's).
func (c *Client) WithKey(key string) *Client {
	cc := *c
	cc.key = key
	return &cc
}

// WithKeyFrom returns a client that reads the device-wide key from the
// agent's data directory at each request (the agent writes it when it
// starts, and again when the key is regenerated).
func (c *Client) WithKeyFrom(dataDir string) *Client {
	cc := *c
	cc.keyFrom = dataDir
	return &cc
}

// ReadKeyFile reads the device-wide key the agent keeps in its data
// directory (api-key, readable by the agent's user only).
func ReadKeyFile(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "api-key"))
	if err != nil {
		return "", fmt.Errorf("read the agent's API key: %w (pass --api-key, set REEVE_API_KEY, or run as the agent's user with --data set to its data directory)", err)
	}
	return strings.TrimSpace(string(b)), nil
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

// ApplyApp makes rel (at commit) the target release of the local app called
// name, keeping the device's other apps, and returns the new target version
// and the device's identity.
func (c *Client) ApplyApp(ctx context.Context, name string, rel reeve.Release, commit string) (int64, DeviceInfo, error) {
	info, err := c.DeviceInfo(ctx)
	if err != nil {
		return 0, info, err
	}
	ts, _, err := c.Target(ctx)
	if err != nil {
		return 0, info, err
	}
	uuid, app := LocalApp(name, rel, commit)
	v, err := c.SetTarget(ctx, WithApp(ts, info.UUID, info.Name, uuid, app))
	return v, info, err
}

// RemoveApp removes the app called name (or with that UUID) from the
// target; its volumes are kept. It returns the new target version, or an
// error with code not_found when the device has no such app.
func (c *Client) RemoveApp(ctx context.Context, name string) (int64, error) {
	info, err := c.DeviceInfo(ctx)
	if err != nil {
		return 0, err
	}
	ts, _, err := c.Target(ctx)
	if err != nil {
		return 0, err
	}
	for uuid, app := range ts[info.UUID].Apps {
		if app.Name == name || uuid == name {
			return c.SetTarget(ctx, WithoutApp(ts, info.UUID, uuid))
		}
	}
	return 0, reeve.Errorf(reeve.CodeNotFound, "no app named %q on this device: `reeve local status` lists them", name)
}
