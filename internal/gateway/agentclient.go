package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"reeve.dev/reeve/internal/dependent"
)

// agentClient speaks to the agent's dependent-device routes.
type agentClient struct {
	base string
	key  string
	hc   *http.Client
}

func newAgentClient(base, key string) *agentClient {
	return &agentClient{base: strings.TrimRight(base, "/"), key: key, hc: &http.Client{Timeout: 60 * time.Second}}
}

// agentError is an error answer of the agent.
type agentError struct {
	Status  int
	Message string
}

func (e *agentError) Error() string {
	return fmt.Sprintf("the agent answered %d: %s", e.Status, e.Message)
}

func (c *agentClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("the agent at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var eb struct {
			Error struct{ Message string } `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &eb) == nil && eb.Error.Message != "" {
			msg = eb.Error.Message
		}
		return &agentError{Status: resp.StatusCode, Message: msg}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// ready reports whether the agent answers: GET / without a key is 401
// from a live agent.
func (c *agentClient) ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/", nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET %s/ answered %d, not 401: is that the reeve agent?", c.base, resp.StatusCode)
	}
	return nil
}

func (c *agentClient) apps(ctx context.Context) ([]dependent.App, error) {
	var out []dependent.App
	return out, c.do(ctx, http.MethodGet, "/v1/dependent-apps", nil, &out)
}

func (c *agentClient) devices(ctx context.Context) ([]dependent.Device, error) {
	var out []dependent.Device
	return out, c.do(ctx, http.MethodGet, "/v1/devices", nil, &out)
}

func (c *agentClient) device(ctx context.Context, uuid string) (dependent.Device, error) {
	var out dependent.Device
	return out, c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(uuid), nil, &out)
}

func (c *agentClient) provision(ctx context.Context, appID int64, deviceType, localID string) (dependent.Device, error) {
	var out dependent.Device
	body := map[string]any{"appId": appID, "device_type": deviceType, "local_id": localID}
	return out, c.do(ctx, http.MethodPost, "/v1/devices", body, &out)
}

func (c *agentClient) update(ctx context.Context, uuid string, fields map[string]any) error {
	return c.do(ctx, http.MethodPut, "/v1/devices/"+url.PathEscape(uuid), fields, nil)
}

type agentLogLine struct {
	Message   string `json:"message"`
	Timestamp int64  `json:"timestamp"`
	IsSystem  bool   `json:"isSystem"`
}

func (c *agentClient) logs(ctx context.Context, uuid string, lines []agentLogLine) error {
	return c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(uuid)+"/logs", lines, nil)
}

// assets downloads an app's firmware tar of one commit into w.
func (c *agentClient) assets(ctx context.Context, appID int64, commit string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/dependent-apps/%d/assets/%s", c.base, appID, url.PathEscape(commit)), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	hc := *c.hc
	hc.Timeout = 0 // a large tar over a slow link; ctx bounds it
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("download the firmware of app %d release %s: %w", appID, commit, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return &agentError{Status: resp.StatusCode, Message: strings.TrimSpace(string(b))}
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
