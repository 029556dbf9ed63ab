package h2

import (
	"golang.org/x/net/http2"
)

// Operations shared by client and upstream connections, run on the connection's read goroutine.

func (c *conn) lookup(id uint32) *stream {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	return s
}

// sendHalf is the half of s whose destination is c.
func (c *conn) sendHalf(s *stream) *half {
	if c.client {
		return &s.resp
	}
	return &s.req
}

// drainTo writes s's data pending toward c. The caller holds s.mu.
func (c *conn) drainTo(s *stream, fl *flusher) {
	if s.done {
		return
	}
	if c.client {
		s.drain(&s.resp, s.upConn(), s.uid, c, s.id, fl)
	} else if s.upConn() == c {
		s.drain(&s.req, &s.cc.conn, s.id, c, s.uid, fl)
	}
}

// drainAll retries every stream in list after c's windows grew.
func (c *conn) drainAll(list []*stream, fl *flusher) {
	for _, s := range list {
		s.mu.Lock()
		c.drainTo(s, fl)
		fin := !s.done && s.complete() && s.finishLocked(nil, 0, false)
		s.mu.Unlock()
		if fin {
			s.cleanup(fl)
		}
	}
}

// onWindowUpdate applies a WINDOW_UPDATE from c's peer (RFC 9113 §6.9).
func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame, fl *flusher) error {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.wmu.Lock()
		if int64(c.sendWindow)+inc > maxWindow {
			c.wmu.Unlock()
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		c.sendWindow += int32(inc)
		list := c.takeBlockedLocked()
		c.wmu.Unlock()
		c.drainAll(list, fl)
		return nil
	}
	s := c.lookup(f.StreamID)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	if s.done || (!c.client && s.upConn() != c) {
		s.mu.Unlock()
		return nil
	}
	h := c.sendHalf(s)
	c.wmu.Lock()
	overflow := int64(h.sendWindow)+inc > maxWindow
	if !overflow {
		h.sendWindow += int32(inc)
	}
	c.wmu.Unlock()
	var fin bool
	if overflow {
		// RFC 9113 §6.9.1: a stream error of type FLOW_CONTROL_ERROR.
		if c.client {
			fin = s.abortLocked(errClientFlow, http2.ErrCodeFlowControl, true, false, fl)
		} else {
			s.rstUpstreamLocked(http2.ErrCodeFlowControl, fl)
			fin = s.abortLocked(errUpstreamFlow, http2.ErrCodeInternal, false, true, fl)
		}
	} else {
		c.drainTo(s, fl)
		fin = s.complete() && s.finishLocked(nil, 0, false)
	}
	s.mu.Unlock()
	if fin {
		s.cleanup(fl)
	}
	return nil
}

// applySettings applies the peer's SETTINGS (RFC 9113 §6.5.2) that matter to a forwarder and
// acknowledges them. maxStreams reports SETTINGS_MAX_CONCURRENT_STREAMS when present.
func (c *conn) applySettings(f *http2.SettingsFrame, fl *flusher, maxStreams func(uint32)) error {
	if f.IsAck() {
		return nil
	}
	var initWin int64 = -1
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingHeaderTableSize:
			c.wmu.Lock()
			c.enc.SetMaxDynamicTableSizeLimit(st.Val)
			c.wmu.Unlock()
		case http2.SettingInitialWindowSize:
			initWin = int64(st.Val)
		case http2.SettingMaxFrameSize:
			c.wmu.Lock()
			c.peerMaxFrame = int32(st.Val)
			c.wmu.Unlock()
		case http2.SettingMaxConcurrentStreams:
			if maxStreams != nil {
				maxStreams(st.Val)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if initWin >= 0 {
		// RFC 9113 §6.9.2: the change applies to every open stream's send window.
		c.mu.Lock()
		c.wmu.Lock()
		delta := int32(initWin) - c.peerInitWindow
		c.peerInitWindow = int32(initWin)
		var list []*stream
		for _, s := range c.streams {
			h := c.sendHalf(s)
			if int64(h.sendWindow)+int64(delta) > maxWindow {
				c.wmu.Unlock()
				c.mu.Unlock()
				return connError{http2.ErrCodeFlowControl, "stream window overflow from SETTINGS"}
			}
			h.sendWindow += delta
			if delta > 0 {
				list = append(list, s)
			}
		}
		c.wmu.Unlock()
		c.mu.Unlock()
		c.drainAll(list, fl)
	}
	c.wmu.Lock()
	c.frameSettingsAck()
	c.wmu.Unlock()
	fl.add(c)
	return nil
}

// readHeaderBlock decodes the block that f starts, reading its CONTINUATION frames. It bounds
// the frames and encoded bytes of one block (CONTINUATION flood, CVE-2024-27316): a block larger
// than twice MaxHeaderListSize, or split into more frames than such a block needs, closes the
// connection.
func (c *conn) readHeaderBlock(d *hdec, f *http2.HeadersFrame, fl *flusher) error {
	d.reset()
	frag := f.HeaderBlockFragment()
	total, frames := len(frag), 1
	if _, err := d.dec.Write(frag); err != nil {
		return connError{http2.ErrCodeCompression, "decoding header block: " + err.Error()}
	}
	maxBytes := 2*int(c.srv.cfg.MaxHeaderListSize) + defaultMaxFrame
	for ended := f.HeadersEnded(); !ended; {
		if c.inputDrained() {
			fl.flush()
		}
		fr, err := c.readFrame()
		if err != nil {
			return err
		}
		cf, ok := fr.(*http2.ContinuationFrame)
		if !ok {
			return connError{http2.ErrCodeProtocol, "expected CONTINUATION"}
		}
		frag = cf.HeaderBlockFragment()
		frames++
		total += len(frag)
		if total > maxBytes || frames > c.srv.maxContinuations {
			return connError{http2.ErrCodeEnhanceYourCalm, "header block too large or too fragmented"}
		}
		if _, err := d.dec.Write(frag); err != nil {
			return connError{http2.ErrCodeCompression, "decoding header block: " + err.Error()}
		}
		ended = cf.HeadersEnded()
	}
	if err := d.dec.Close(); err != nil {
		return connError{http2.ErrCodeCompression, "decoding header block: " + err.Error()}
	}
	return nil
}
