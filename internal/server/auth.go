package server

import (
	"context"
	"errors"
	"fmt"

	"reeve.dev/reeve"
)

// EnsureAdminToken makes sure an operator can get in. With a token given
// (--admin-token), that token is accepted from now on; it returns "". With
// none, and no token stored yet (a first start), it makes one, stores its
// hash and returns it so it can be shown once.
func (s *Server) EnsureAdminToken(ctx context.Context, token string) (string, error) {
	if token != "" {
		if len(token) < 16 {
			return "", reeve.Errorf(reeve.CodeInvalid, "the admin token is too short: use at least 16 characters (`openssl rand -hex 32` makes a good one)")
		}
		_, err := s.st.TokenByHash(ctx, Hash(token))
		if err == nil {
			return "", nil
		}
		if reeve.ErrorCode(err) != reeve.CodeNotFound {
			return "", err
		}
		_, err = s.st.CreateToken(ctx, reeve.Token{Name: "admin", Hash: Hash(token), CreatedAt: s.now()})
		return "", err
	}
	n, err := s.st.CountTokens(ctx)
	if err != nil || n > 0 {
		return "", err
	}
	token = NewSecret()
	if _, err := s.st.CreateToken(ctx, reeve.Token{Name: "admin", Hash: Hash(token), CreatedAt: s.now()}); err != nil {
		return "", err
	}
	return token, nil
}

var errNoToken = reeve.Errorf(reeve.CodeUnauthorized, "an operator token is required: send Authorization: Bearer <token> (`reeve login` stores one for the CLI)")

// AuthOperator returns the token record of an operator token.
func (s *Server) AuthOperator(ctx context.Context, token string) (reeve.Token, error) {
	if token == "" {
		return reeve.Token{}, errNoToken
	}
	t, err := s.st.TokenByHash(ctx, Hash(token))
	if reeve.ErrorCode(err) == reeve.CodeNotFound {
		return t, reeve.Errorf(reeve.CodeUnauthorized, "this operator token is not valid: check it, or ask for a new one")
	}
	return t, err
}

// provisioningKey returns the usable provisioning key for secret.
func (s *Server) provisioningKey(ctx context.Context, secret string) (reeve.ProvisioningKey, error) {
	if secret == "" {
		return reeve.ProvisioningKey{}, reeve.Errorf(reeve.CodeUnauthorized, "a provisioning key is required: send Authorization: Bearer <key> (`reeve key create` makes one)")
	}
	k, err := s.st.ProvisioningKeyByHash(ctx, Hash(secret))
	switch {
	case reeve.ErrorCode(err) == reeve.CodeNotFound:
		return k, reeve.Errorf(reeve.CodeUnauthorized, "this provisioning key is not valid: create one with `reeve key create --fleet F`")
	case err != nil:
		return k, err
	case !k.RevokedAt.IsZero():
		return k, reeve.Errorf(reeve.CodeUnauthorized, "this provisioning key was revoked on %s: create a new one with `reeve key create`", k.RevokedAt.Format("2006-01-02"))
	case !k.Usable(s.now()):
		return k, reeve.Errorf(reeve.CodeUnauthorized, "this provisioning key expired on %s: create a new one with `reeve key create`", k.ExpiresAt.Format("2006-01-02 15:04 MST"))
	}
	return k, nil
}

// RegisterRequest is what a device sends to join a fleet.
type RegisterRequest struct {
	UUID       string
	DeviceType string
	APIKey     string
	Name       string
}

const minDeviceKey = 32

// Register enrols a device in the fleet of the provisioning key.
func (s *Server) Register(ctx context.Context, provKey string, req RegisterRequest) (reeve.Device, error) {
	k, err := s.provisioningKey(ctx, provKey)
	if err != nil {
		return reeve.Device{}, err
	}
	var p []reeve.Problem
	if !reeve.ValidUUID(req.UUID) {
		p = append(p, reeve.Problem{Path: "uuid", Message: fmt.Sprintf("%q is not a device UUID: use 32 lowercase hex digits", req.UUID)})
	}
	if req.DeviceType == "" {
		p = append(p, reeve.Problem{Path: "device_type", Message: "missing: say what kind of device this is (e.g. raspberrypi4-64)"})
	}
	if len(req.APIKey) < minDeviceKey {
		p = append(p, reeve.Problem{Path: "api_key", Message: fmt.Sprintf("the device key must be at least %d characters of random", minDeviceKey)})
	}
	if len(req.Name) > 128 {
		p = append(p, reeve.Problem{Path: "name", Message: "longer than 128 characters"})
	}
	if len(p) > 0 {
		return reeve.Device{}, &reeve.ValidationError{Problems: p}
	}
	f, err := s.st.Fleet(ctx, k.FleetID)
	if err != nil {
		return reeve.Device{}, err
	}
	if f.Dependent() {
		return reeve.Device{}, reeve.Errorf(reeve.CodeForbidden, "fleet %q is a fleet of dependent devices: they join through their gateway's agent, not with a provisioning key", f.Name)
	}
	if err := checkDeviceType(f, req.DeviceType); err != nil {
		return reeve.Device{}, err
	}
	name := req.Name
	if name == "" {
		name = req.UUID[:7]
	}
	d, err := s.st.CreateDevice(ctx, reeve.Device{
		UUID: req.UUID, Name: name, FleetID: f.ID, DeviceType: req.DeviceType,
		KeyHash: Hash(req.APIKey), CreatedAt: s.now(),
	})
	if reeve.ErrorCode(err) == reeve.CodeConflict {
		return d, reeve.Errorf(reeve.CodeConflict, "device %s is already registered: if this is that device, use its device key, or exchange keys with POST /device/v3/%s/key-exchange", req.UUID, req.UUID)
	}
	if err == nil {
		s.log.Info("device registered", "uuid", d.UUID, "fleet", f.Name, "type", d.DeviceType)
	}
	return d, err
}

// checkDeviceType refuses a device of a type the fleet does not take.
func checkDeviceType(f reeve.Fleet, deviceType string) error {
	if f.DeviceType != reeve.DeviceTypeAny && f.DeviceType != deviceType {
		return reeve.Errorf(reeve.CodeInvalid, "a %s device cannot join fleet %q, which is for %s devices", deviceType, f.Name, f.DeviceType)
	}
	return nil
}

// KeyExchange gives a registered device a new device key, on the word of a
// provisioning key of the device's fleet: a reflashed device keeps its
// identity this way.
func (s *Server) KeyExchange(ctx context.Context, provKey, uuid, apiKey string) error {
	k, err := s.provisioningKey(ctx, provKey)
	if err != nil {
		return err
	}
	if len(apiKey) < minDeviceKey {
		return reeve.Errorf(reeve.CodeInvalid, "api_key: the device key must be at least %d characters of random", minDeviceKey)
	}
	d, err := s.st.UpdateDevice(ctx, uuid, func(d *reeve.Device) error {
		if d.FleetID != k.FleetID {
			return reeve.Errorf(reeve.CodeForbidden, "this provisioning key is for another fleet than device %s's", uuid)
		}
		d.KeyHash = Hash(apiKey)
		return nil
	})
	if err != nil {
		return err
	}
	s.hub.notify(d.FleetID) // the old key's polls end; cached keys go
	s.log.Info("device key exchanged", "uuid", uuid)
	return nil
}

var errNoDeviceKey = reeve.Errorf(reeve.CodeUnauthorized, "a device key is required: send Authorization: Bearer <device key>")

// AuthDevice returns the device whose key is key, when it is the device
// uuid: a key of another device is forbidden, an unknown or revoked key
// unauthorized.
func (s *Server) AuthDevice(ctx context.Context, uuid, key string) (reeve.Device, error) {
	if key == "" {
		return reeve.Device{}, errNoDeviceKey
	}
	h := Hash(key)
	if p, ok := s.cachedDevice(uuid); ok && p.dev.KeyHash != "" && sameHash(p.dev.KeyHash, h) {
		return p.dev, nil
	}
	d, err := s.st.Device(ctx, uuid)
	if err == nil && d.KeyHash != "" && sameHash(d.KeyHash, h) {
		return d, nil
	}
	if err != nil && reeve.ErrorCode(err) != reeve.CodeNotFound {
		return reeve.Device{}, err
	}
	// Not this device's key: whose is it?
	other, oerr := s.st.DeviceByKeyHash(ctx, h)
	switch {
	case oerr == nil && other.UUID != uuid:
		return reeve.Device{}, reeve.Errorf(reeve.CodeForbidden, "this device key belongs to another device: a device reads and writes only itself")
	case oerr != nil && reeve.ErrorCode(oerr) != reeve.CodeNotFound:
		return reeve.Device{}, oerr
	case errors.Is(err, nil) && d.KeyHash == "":
		return reeve.Device{}, reeve.Errorf(reeve.CodeUnauthorized, "the key of device %s was revoked: provision the device again with a new key", uuid)
	}
	return reeve.Device{}, reeve.Errorf(reeve.CodeUnauthorized, "this device key is not valid (unknown, revoked, or the device was deleted): provision the device again")
}
