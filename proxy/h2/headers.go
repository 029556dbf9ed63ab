package h2

import (
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// hdec decodes header blocks of one connection and validates each field as it is emitted
// (RFC 9113 §8.2.1). It is used only by the connection's read goroutine.
type hdec struct {
	dec        *hpack.Decoder
	max        uint32
	fields     []hpack.HeaderField
	scratch    []hpack.HeaderField
	size       uint32
	tooLarge   bool
	bad        string // first reason the block is malformed, "" if none
	sawRegular bool
}

func newHdec(max uint32) *hdec {
	d := &hdec{max: max}
	d.dec = hpack.NewDecoder(4096, d.emit)
	d.dec.SetMaxStringLength(int(max))
	return d
}

// reset starts a block. fields reuses one scratch array: a caller that keeps fields past the
// next block must copy them.
func (d *hdec) reset() {
	if cap(d.fields) > cap(d.scratch) {
		d.scratch = d.fields // keep the larger array
	}
	d.fields = d.scratch[:0]
	d.size, d.tooLarge, d.bad, d.sawRegular = 0, false, "", false
}

func (d *hdec) emit(f hpack.HeaderField) {
	if d.tooLarge {
		return // keep decoding to keep the HPACK table in sync, but drop fields
	}
	d.size += f.Size()
	if d.size > d.max {
		d.tooLarge = true
		d.fields = d.fields[:0]
		return
	}
	if d.bad != "" {
		return
	}
	if f.IsPseudo() {
		if d.sawRegular {
			d.bad = "pseudo-header field after regular field"
			return
		}
	} else {
		d.sawRegular = true
		if !validFieldName(f.Name) {
			d.bad = "invalid header field name"
			return
		}
	}
	// RFC 9113 §8.2.1: NUL, CR, LF (and, like x/net, other controls but HTAB) are malformed,
	// and so is whitespace at either end of a value.
	if !httpguts.ValidHeaderFieldValue(f.Value) {
		d.bad = "invalid header field value for " + strings.ToValidUTF8(f.Name, "?")
		return
	}
	if v := f.Value; v != "" && (isSpace(v[0]) || isSpace(v[len(v)-1])) {
		d.bad = "header field value with leading or trailing whitespace for " + strings.ToValidUTF8(f.Name, "?")
		return
	}
	d.fields = append(d.fields, f)
}

// validFieldName: a token in lowercase (RFC 9113 §8.2.1, §8.2).
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b >= 'A' && b <= 'Z' || b >= 0x80 || !httpguts.IsTokenRune(rune(b)) {
			return false
		}
	}
	return true
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' }

// checkFields is the one validator of the regular fields of every block the engine forwards,
// requests and responses, headers and trailers. It returns the content-length (-1 if none), the
// host field, and a reason if the message is malformed:
//   - a connection-specific field (RFC 9113 §8.2.2): connection, keep-alive, proxy-connection,
//     transfer-encoding, upgrade, or te other than "trailers". A receiver must treat the
//     message as malformed, not strip the field. te is held to the request rule in responses
//     too, as nghttp2 does: "te: trailers" passes, any other value does not.
//   - a content-length that is not a number, or several that differ (RFC 9110 §8.6 lets equal
//     ones stand for one); whether it matches the content is checked as DATA arrives (§8.1.1).
func checkFields(fs []hpack.HeaderField) (contentLength int64, host, reason string) {
	contentLength = -1
	for i := range fs {
		f := &fs[i]
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return -1, "", "connection-specific header field " + f.Name + " (RFC 9113 §8.2.2)"
		case "te":
			if f.Value != "trailers" {
				return -1, "", `te other than "trailers" (RFC 9113 §8.2.2)`
			}
		case "content-length":
			n, ok := parseContentLength(f.Value)
			if !ok || contentLength >= 0 && n != contentLength {
				return -1, "", "invalid content-length"
			}
			contentLength = n
		case "host":
			host = f.Value
		}
	}
	return contentLength, host, ""
}

// parseContentLength parses 1*DIGIT (RFC 9110 §8.6), at most 18 digits so it cannot overflow.
func parseContentLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, true
}

// noContent reports a response that has no content whatever its content-length says (RFC 9113
// §8.1.1, RFC 9110 §6.4.1): 204, 304, or the answer to HEAD.
func noContent(status int, method string) bool {
	return status == 204 || status == 304 || method == "HEAD"
}

// parseRequest fills h from a decoded request block (RFC 9113 §8.3.1) and returns its
// content-length (-1 if none). It returns a reason when the request is malformed; connect
// reports a well-formed CONNECT request, which the engine does not tunnel.
func parseRequest(fs []hpack.HeaderField, h *Head) (contentLength int64, reason string, connect bool) {
	i := 0
	var seen uint8
	for ; i < len(fs) && fs[i].IsPseudo(); i++ {
		f := &fs[i]
		var bit uint8
		var dst *string
		switch f.Name {
		case ":method":
			bit, dst = 1, &h.Method
		case ":scheme":
			bit, dst = 2, &h.Scheme
		case ":authority":
			bit, dst = 4, &h.Authority
		case ":path":
			bit, dst = 8, &h.Path
		default: // :status, :protocol (extended CONNECT is not enabled), unknown
			return -1, "invalid request pseudo-header " + f.Name, false
		}
		if seen&bit != 0 {
			return -1, "duplicate " + f.Name, false
		}
		seen |= bit
		*dst = f.Value
	}
	h.Header = fs[i:]
	contentLength, host, reason := checkFields(h.Header)
	switch {
	case reason != "":
		return -1, reason, false
	case h.Method == "":
		return -1, "missing :method", false
	case h.Method == "CONNECT":
		// RFC 9113 §8.5: :scheme and :path omitted, :authority present.
		if seen&(2|8) != 0 || h.Authority == "" {
			return -1, "CONNECT with :scheme or :path, or without :authority", false
		}
		return contentLength, "", true
	case h.Scheme == "" || h.Path == "":
		return -1, "missing :scheme or :path", false
	case h.Path[0] != '/' && !(h.Method == "OPTIONS" && h.Path == "*"):
		return -1, "invalid :path", false
	}
	if h.Authority == "" {
		h.Authority = host
	} else if host != "" && !strings.EqualFold(host, h.Authority) {
		// RFC 9113 §8.3.1: a host that names another entity than :authority; routing by one
		// and forwarding the other is how requests get sent where the policy did not look.
		return -1, "host differs from :authority", false
	}
	return contentLength, "", false
}

// parseResponse checks a response block (RFC 9113 §8.3.2, §8.2.2) and returns its status,
// regular fields and content-length (-1 if none).
func parseResponse(fs []hpack.HeaderField) (status int, regular []hpack.HeaderField, contentLength int64, reason string) {
	i := 0
	for ; i < len(fs) && fs[i].IsPseudo(); i++ {
		if fs[i].Name != ":status" || status != 0 {
			return 0, nil, -1, "invalid response pseudo-header " + fs[i].Name
		}
		v := fs[i].Value
		if len(v) != 3 || v[0] < '1' || v[0] > '9' || v[1] < '0' || v[1] > '9' || v[2] < '0' || v[2] > '9' {
			return 0, nil, -1, "invalid :status"
		}
		status = int(v[0]-'0')*100 + int(v[1]-'0')*10 + int(v[2]-'0')
	}
	if status == 0 {
		return 0, nil, -1, "missing :status"
	}
	regular = fs[i:]
	contentLength, _, reason = checkFields(regular)
	if reason != "" {
		return 0, nil, -1, reason
	}
	return status, regular, contentLength, ""
}

// parseTrailers checks a trailer block: no pseudo-headers (RFC 9113 §8.1), no
// connection-specific fields (§8.2.2).
func parseTrailers(fs []hpack.HeaderField) ([]hpack.HeaderField, string) {
	for i := range fs {
		if fs[i].IsPseudo() {
			return nil, "pseudo-header in trailers"
		}
	}
	if _, _, reason := checkFields(fs); reason != "" {
		return nil, reason
	}
	return fs, ""
}

// grpcStatus returns the grpc-status field's value, or -1.
func grpcStatus(fs []hpack.HeaderField) int {
	for i := range fs {
		if fs[i].Name == "grpc-status" {
			v := fs[i].Value
			n := 0
			if v == "" || len(v) > 4 {
				return -1
			}
			for j := 0; j < len(v); j++ {
				if v[j] < '0' || v[j] > '9' {
					return -1
				}
				n = n*10 + int(v[j]-'0')
			}
			return n
		}
	}
	return -1
}

// encodeGRPCMessage percent-encodes a grpc-message value (gRPC over HTTP/2 spec).
func encodeGRPCMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		const hex = "0123456789ABCDEF"
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// gRPC status codes the engine synthesizes.
const (
	grpcUnavailable      = 14
	grpcPermissionDenied = 7
	grpcInternal         = 13
	grpcDeadlineExceeded = 4
)

// parseGRPCTimeout reads a grpc-timeout value (gRPC over HTTP/2: at most 8 digits and a unit
// of H, M, S, m, u or n); ok false for a malformed one, which the engine then ignores.
func parseGRPCTimeout(v string) (d time.Duration, ok bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v)-1; i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(v[i]-'0')
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > int64(math.MaxInt64/unit) {
		return math.MaxInt64, true
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as a grpc-timeout value: at most 8 digits, in the finest unit that
// holds it (rounded up, so a deadline passed on is never earlier than the one that holds). d > 0.
func formatGRPCTimeout(d time.Duration) string {
	const most = 1e8 - 1
	for _, u := range [...]struct {
		d time.Duration
		c byte
	}{{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}, {time.Hour, 'H'}} {
		if n := (d + u.d - 1) / u.d; n <= most {
			return strconv.FormatInt(int64(n), 10) + string(u.c)
		}
	}
	return "99999999H"
}

func statusText(code int) string {
	switch code {
	case 400:
		return "400"
	case 405:
		return "405"
	case 431:
		return "431"
	case 502:
		return "502"
	case 503:
		return "503"
	case 403:
		return "403"
	}
	if code >= 100 && code <= 999 {
		return strconv.Itoa(code) // a Refusal's own status
	}
	return "500"
}
