/**
 * The error code of the GOAWAY that ends a connection for its peer's fault. Some connection errors
 * nghttp2 answers itself, with the code RFC 9113 names (DATA on stream 0: PROTOCOL_ERROR; a frame past
 * SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR). Others it hands to Node, which destroys the session with
 * INTERNAL_ERROR — by RFC 9113 §7 a fault of the server — whatever the peer did: HEADERS on an even
 * stream id, a WINDOW_UPDATE of 0 (PROTOCOL_ERROR), a window past 2^31-1 (FLOW_CONTROL_ERROR). A
 * client, or the operator reading its logs, was told the server broke.
 */
import http2 from "node:http2";

const c = http2.constants;

/** nghttp2's library error (nghttp2.h `nghttp2_error`) -> the RFC 9113 §7 code it stands for. */
const SPEC_CODE = new Map<number, number>([
  [-505, c.NGHTTP2_PROTOCOL_ERROR], // NGHTTP2_ERR_PROTO
  [-510, c.NGHTTP2_STREAM_CLOSED], // NGHTTP2_ERR_STREAM_CLOSED
  [-522, c.NGHTTP2_FRAME_SIZE_ERROR], // NGHTTP2_ERR_FRAME_SIZE_ERROR
  [-523, c.NGHTTP2_COMPRESSION_ERROR], // NGHTTP2_ERR_HEADER_COMP
  [-524, c.NGHTTP2_FLOW_CONTROL_ERROR], // NGHTTP2_ERR_FLOW_CONTROL
  [-531, c.NGHTTP2_PROTOCOL_ERROR], // NGHTTP2_ERR_HTTP_HEADER
  [-536, c.NGHTTP2_PROTOCOL_ERROR], // NGHTTP2_ERR_SETTINGS_EXPECTED
  [-903, c.NGHTTP2_PROTOCOL_ERROR], // NGHTTP2_ERR_BAD_CLIENT_MAGIC
  [-904, c.NGHTTP2_ENHANCE_YOUR_CALM], // NGHTTP2_ERR_FLOODED
]);

/**
 * Makes `session`, when Node destroys it for an error nghttp2 found in what its peer sent, send the
 * GOAWAY code the spec names for that error instead of INTERNAL_ERROR. Other destroys are unchanged.
 */
export function namingPeerErrors(session: http2.Http2Session): void {
  const destroy = session.destroy.bind(session);
  session.destroy = (error?: Error, code?: number) => {
    const errno = (error as { code?: string; errno?: number } | undefined)?.errno;
    const named =
      code === undefined && (error as { code?: string } | undefined)?.code === "ERR_HTTP2_ERROR"
        ? SPEC_CODE.get(errno ?? 0)
        : undefined;
    destroy(error, named ?? code);
  };
}
