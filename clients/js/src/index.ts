/**
 * qkv's JavaScript client: every command of docs/PROTOCOL.md over WebTransport or WebSocket, in
 * browsers and in node. README.md says how to use it.
 */

export { connect, webSocketUrl, webTransportCert } from "./client.js";
export type { Client, ClientState, ConnectOptions, HgetallOptions, Subscription, SubscriptionEvent } from "./client.js";
export { QkvError, NO_ANSWER, executedFor } from "./errors.js";
export type { Executed } from "./errors.js";
export { value, float, formatValue, toBase64, fromBase64 } from "./value.js";
export type { Value, ValueLike, Entry } from "./value.js";
export { backoffDelay, backoffCeiling, DEFAULT_RECONNECT } from "./backoff.js";
export type { ReconnectOptions } from "./backoff.js";
export type { WebTransportCert } from "./webtransport.js";
