// The baseline of `cargo xtask bench browser`: a page that does what PeerBubble's does to reach a contact —
// authenticate to the same bubble-server's signaling, exchange a complete (non-trickle) offer and answer with the
// same ICE servers, open one ordered DataChannel — with nothing else: no worker, no wasm, no MLS, no
// certificate check. Evaluated in a Chromium page on the bubble's own origin; exposes `window.raw`.
(() => {
  const enc = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const dec = (text) => Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  const state = { ws: null, ice: [], next: 1, pcs: new Map(), opened: new Map() };

  function sendTo(peer, message) {
    const body = enc(new TextEncoder().encode(JSON.stringify(message)));
    state.ws.send(JSON.stringify({ type: 'send', id: state.next++, to: peer, body }));
  }

  async function gathered(pc) {
    if (pc.iceGatheringState !== 'complete') {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 15000);
        pc.addEventListener('icegatheringstatechange', () => {
          if (pc.iceGatheringState === 'complete') {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    }
    return pc.localDescription.sdp;
  }

  async function onDeliver(from, message) {
    if (message.offer) {
      const pc = new RTCPeerConnection({ iceServers: state.ice });
      state.pcs.set(from, pc);
      pc.ondatachannel = (e) => state.opened.set(from, e.channel);
      await pc.setRemoteDescription({ type: 'offer', sdp: message.offer });
      await pc.setLocalDescription(await pc.createAnswer());
      sendTo(from, { answer: await gathered(pc) });
    } else if (message.answer) {
      await state.pcs.get(from)?.setRemoteDescription({ type: 'answer', sdp: message.answer });
    }
  }

  /** Authenticates with the member's Ed25519 seed (base64url, as `peerbubble enroll --key-out` writes it). */
  async function connect(url, seed) {
    const pkcs8 = concat(new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]), dec(seed.trim()));
    const key = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign']);
    const publicKey = (await crypto.subtle.exportKey('jwk', key)).x;
    const ws = new WebSocket(url);
    state.ws = ws;
    return new Promise((resolve, reject) => {
      ws.onclose = (e) => reject(new Error(`signaling closed: ${e.code} ${e.reason}`));
      ws.onmessage = async (e) => {
        const f = JSON.parse(e.data);
        if (f.type === 'challenge') {
          const bubble = new TextEncoder().encode(f.bubble);
          const length = new Uint8Array(4);
          new DataView(length.buffer).setUint32(0, bubble.length);
          const label = new TextEncoder().encode('PeerBubble-v1-signature\0signal-auth\0');
          const signed = concat(label, length, bubble, dec(f.nonce), dec(publicKey));
          const signature = new Uint8Array(await crypto.subtle.sign('Ed25519', key, signed));
          ws.send(JSON.stringify({ type: 'auth', public_key: publicKey, nonce: f.nonce, signature: enc(signature) }));
        } else if (f.type === 'welcome') {
          state.ice = f.ice_servers;
          resolve(f.member);
        } else if (f.type === 'deliver') {
          void onDeliver(f.from, JSON.parse(new TextDecoder().decode(dec(f.body))));
        } else if (f.type === 'error') {
          reject(new Error(`signaling refused: ${f.code} ${f.message}`));
        }
      };
    });
  }

  /** Offers a connection to `peer`; resolves when the DataChannel is open. */
  async function call(peer) {
    const pc = new RTCPeerConnection({ iceServers: state.ice });
    state.pcs.set(peer, pc);
    const channel = pc.createDataChannel('peerbubble', { ordered: true });
    const open = new Promise((resolve) => (channel.onopen = resolve));
    await pc.setLocalDescription(await pc.createOffer());
    sendTo(peer, { offer: await gathered(pc) });
    await open;
  }

  window.raw = { connect, call };
})();
