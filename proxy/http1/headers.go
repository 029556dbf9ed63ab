package http1

import (
	"bufio"
	"errors"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// connTokens returns the connection options of a Connection header (RFC 9110 §7.6.1), as sent.
func connTokens(vv []string) []string {
	if len(vv) == 0 {
		return nil
	}
	var out []string
	for _, v := range vv {
		for t := range strings.SplitSeq(v, ",") {
			if t = textproto.TrimString(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

// hasToken reports whether a comma-separated list header holds token, case-insensitively.
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

// hopByHop reports whether field k (canonical) must not be forwarded: RFC 9110 §7.6.1 lists
// Connection, the fields it names, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
// Upgrade. The engine writes its own framing (Content-Length, Transfer-Encoding, Trailer) and
// Host, so those are skipped here too and added back by the writer.
func hopByHop(k string, named []string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Te", "Transfer-Encoding", "Upgrade",
		"Trailer", "Content-Length", "Host":
		return true
	}
	for _, t := range named {
		if strings.EqualFold(t, k) {
			return true
		}
	}
	return false
}

// forbiddenTrailer reports whether a trailer field must be dropped: RFC 9110 §6.5.1 forbids
// fields about framing, routing and connection control in trailers.
func forbiddenTrailer(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Te", "Transfer-Encoding", "Upgrade",
		"Trailer", "Content-Length", "Host", "Content-Encoding", "Content-Type", "Content-Range":
		return true
	}
	return false
}

func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// writeFields writes the end-to-end fields of h. Values were validated on the way in (textproto
// refuses CR, LF and NUL), so they cannot split the message.
func writeFields(bw *bufio.Writer, h http.Header, named []string) {
	for k, vv := range h {
		if hopByHop(k, named) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
}

func writeTrailers(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		if forbiddenTrailer(k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
}

// writeChunk writes p as one chunk (RFC 9112 §7.1).
func writeChunk(bw *bufio.Writer, p []byte) error {
	var hex [16]byte
	bw.Write(strconv.AppendInt(hex[:0], int64(len(p)), 16))
	bw.WriteString("\r\n")
	bw.Write(p)
	_, err := bw.WriteString("\r\n")
	return err
}

// parseContentLength accepts one or more identical Content-Length values of digits only
// (RFC 9110 §8.6); differing values are a smuggling attempt (RFC 9112 §6.3).
func parseContentLength(vv []string) (int64, error) {
	first := textproto.TrimString(vv[0])
	for _, v := range vv[1:] {
		if textproto.TrimString(v) != first {
			return 0, errors.New("differing Content-Length values")
		}
	}
	if first == "" || len(first) > 18 {
		return 0, errors.New("invalid Content-Length")
	}
	var n int64
	for i := 0; i < len(first); i++ {
		c := first[i]
		if c < '0' || c > '9' {
			return 0, errors.New("invalid Content-Length")
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// statusLine returns "code reason" for a response, replacing a reason phrase with control bytes.
func statusLine(resp *http.Response) string {
	s := resp.Status
	code := resp.StatusCode
	ok := len(s) >= 3 && int(s[0]-'0')*100+int(s[1]-'0')*10+int(s[2]-'0') == code
	for i := 0; ok && i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			ok = false
		}
	}
	if ok {
		return s
	}
	return strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
}

// oneLine makes an error text fit in a one-line response body.
func oneLine(s string) string {
	if len(s) > 512 {
		s = s[:512]
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}
