package serverapi

import (
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/server"
)

// Paths and limits shared by the handlers and the clients.
const (
	// DefaultAddress is where `reeve server` listens unless told otherwise.
	DefaultAddress = "127.0.0.1:48400"
	// MaxBody limits every JSON body but a release's.
	MaxBody = 1 << 20
	// MaxComposeBody limits a release push.
	MaxComposeBody = 4 << 20
	// MaxWait is the longest long poll the server holds, in seconds.
	MaxWait = 300
	// LongPollHeader tells a device the server offers long polling and
	// how long it holds a request at most, in seconds.
	LongPollHeader = "X-Reeve-Long-Poll"
)

// RegisterRequest is the body of POST /device/register.
type RegisterRequest struct {
	UUID       string `json:"uuid"`
	DeviceType string `json:"device_type"`
	APIKey     string `json:"api_key"`
	Name       string `json:"name,omitempty"`
}

// KeyExchangeRequest is the body of POST /device/v3/{uuid}/key-exchange.
type KeyExchangeRequest struct {
	APIKey string `json:"api_key"`
}

// DeviceTags is the answer of GET and PATCH /device/v3/{uuid}/tags.
type DeviceTags struct {
	Tags reeve.Tags `json:"tags"`
}

// PatchTagsRequest is the body of PATCH /device/v3/{uuid}/tags: a null
// value removes the tag.
type PatchTagsRequest struct {
	Tags map[string]*string `json:"tags"`
}

// RegisterDependentRequest is the body of POST
// /device/v3/{uuid}/dependent-devices: a gateway registers a dependent
// device it carries. AppID is the dependent app's id in the gateway's
// target state (its fleet's id); UUID, when empty, is made by the server.
type RegisterDependentRequest struct {
	AppID      int64  `json:"app_id"`
	DeviceType string `json:"device_type"`
	LocalID    string `json:"local_id,omitempty"`
	Name       string `json:"name,omitempty"`
	UUID       string `json:"uuid,omitempty"`
}

// WhoAmI is the answer of GET /api/v1/whoami.
type WhoAmI struct {
	Token   reeve.Token `json:"token"`
	Version string      `json:"version"`
}

// CreateFleetRequest is the body of POST /api/v1/fleets. Parent (a
// fleet's name or id) makes a fleet of dependent devices, carried by the
// devices of the parent fleet.
type CreateFleetRequest struct {
	Name           string `json:"name"`
	DeviceType     string `json:"device_type,omitempty"`
	UpdateStrategy string `json:"update_strategy,omitempty"`
	Parent         string `json:"parent,omitempty"`
}

// UpdateFleetRequest is the body of PATCH /api/v1/fleets/{fleet}. Nil
// fields are left as they are; an empty PinnedRelease unpins.
type UpdateFleetRequest struct {
	UpdateStrategy *string `json:"update_strategy,omitempty"`
	PinnedRelease  *string `json:"pinned_release,omitempty"`
}

// CreateKeyRequest is the body of POST /api/v1/fleets/{fleet}/keys.
type CreateKeyRequest struct {
	Name      string    `json:"name,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// CreatedKey answers POST /api/v1/fleets/{fleet}/keys: the only time the
// key itself is shown.
type CreatedKey struct {
	Key             string                `json:"key"`
	ProvisioningKey reeve.ProvisioningKey `json:"provisioning_key"`
}

// PushRequest is the body of POST /api/v1/fleets/{fleet}/releases.
type PushRequest struct {
	Compose string `json:"compose"`
}

// DeviceView is a device as the operator API shows it: the stored device
// with online, fleet and target_commit, and for a dependent device the
// UUID of its gateway.
type DeviceView = server.DeviceView

// UpdateDeviceRequest is the body of PATCH /api/v1/devices/{uuid}. Nil
// fields are left as they are; an empty PinnedRelease unpins.
type UpdateDeviceRequest struct {
	Name          *string `json:"name,omitempty"`
	PinnedRelease *string `json:"pinned_release,omitempty"`
}

// TagRequest is the body of PUT /api/v1/devices/{uuid}/tags/{key}.
type TagRequest struct {
	Value string `json:"value"`
}

// SetVarRequest is the body of PUT /api/v1/env and /api/v1/config. Fleet
// is a fleet name or id; Device a device UUID.
type SetVarRequest struct {
	Fleet   string `json:"fleet,omitempty"`
	Device  string `json:"device,omitempty"`
	Service string `json:"service,omitempty"`
	Name    string `json:"name"`
	Value   string `json:"value"`
}

// VarScope names a variable scope in the operator API's terms.
type VarScope struct {
	Fleet   string // fleet name or id
	Device  string // device UUID
	Service string
}
