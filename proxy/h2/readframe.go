package h2

import (
	"errors"

	"golang.org/x/net/http2"
)

// readFrame reads the next frame, adding to the Framer's checks the two it leaves to callers.
// Every read loop (and readHeaderBlock) reads through it.
func (c *conn) readFrame() (http2.Frame, error) {
	fh, err := c.fr.ReadFrameHeader()
	if err != nil {
		return nil, err
	}
	// RFC 9113 §4.2: a frame too small for the fields its flags announce is a FRAME_SIZE_ERROR,
	// and one that carries a field block a connection error (HPACK state is at stake). The
	// Framer reports these as io.ErrUnexpectedEOF, which looks like a lost connection.
	if fh.Length < minPayload(fh) {
		return nil, connError{http2.ErrCodeFrameSize, fh.Type.String() + " frame too short for its padding or priority fields"}
	}
	f, err := c.fr.ReadFrameForHeader(fh)
	if err != nil && fh.Type == http2.FrameHeaders {
		// RFC 9113 §6.2: padding not less than the payload is a connection error
		// PROTOCOL_ERROR. The Framer calls it a stream error, but the block was not decoded,
		// so HPACK state would be lost: the connection cannot go on.
		var se http2.StreamError
		if errors.As(err, &se) {
			return nil, connError{http2.ErrCodeProtocol, "HEADERS padding not less than the payload"}
		}
	}
	return f, err
}

// minPayload is the least payload a frame's flags require (RFC 9113 §6.1, §6.2, §6.6).
func minPayload(fh http2.FrameHeader) uint32 {
	var n uint32
	switch fh.Type {
	case http2.FrameData:
		if fh.Flags.Has(http2.FlagDataPadded) {
			n++
		}
	case http2.FrameHeaders:
		if fh.Flags.Has(http2.FlagHeadersPadded) {
			n++
		}
		if fh.Flags.Has(http2.FlagHeadersPriority) {
			n += 5
		}
	case http2.FramePushPromise:
		n = 4
		if fh.Flags.Has(http2.FlagPushPromisePadded) {
			n++
		}
	}
	return n
}
