'use strict';
// Node.js client for the APEX serving stack. The service definitions are loaded from
// the repository's .proto files (the one contract), not hand-written.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.APEX_PROTO_ROOT || path.join(__dirname, '..', '..', 'protos');

function loadApex() {
  const definition = protoLoader.loadSync(
    ['apex/v1/generation.proto', 'apex/v1/admin.proto'],
    { includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
  );
  return grpc.loadPackageDefinition(definition).apex.v1;
}

function request(prompt, sampling = {}, requestId = '') {
  const msg = { request_id: requestId, sampling };
  if (typeof prompt === 'string') msg.text = prompt;
  else msg.token_ids = { ids: prompt };
  return msg;
}

class ApexClient {
  /**
   * @param {string} address host:port of the APEX daemon
   * @param {{token?: string}} options token: sent as "authorization: Bearer <token>"
   */
  constructor(address = '127.0.0.1:50051', { token } = {}) {
    const apex = loadApex();
    const creds = grpc.credentials.createInsecure();
    this.generation = new apex.Generation(address, creds);
    this.admin = new apex.Admin(address, creds);
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
  }

  /** A readable stream of GenerateResponse messages; the last has finish_reason set. */
  generateStream(prompt, sampling = {}, requestId = '') {
    return this.generation.Generate(request(prompt, sampling, requestId), this.metadata);
  }

  /** Resolves to a GenerateResult. */
  generate(prompt, sampling = {}, requestId = '') {
    return this.unary(this.generation, 'GenerateUnary', request(prompt, sampling, requestId));
  }

  /** Resolves to true when a live request had that id. */
  async abort(requestId) {
    const reply = await this.unary(this.generation, 'Abort', { request_id: requestId });
    return reply.found;
  }

  modelInfo() {
    return this.unary(this.generation, 'GetModelInfo', {});
  }

  unary(stub, method, msg) {
    return new Promise((resolve, reject) => {
      stub[method](msg, this.metadata, (err, reply) => (err ? reject(err) : resolve(reply)));
    });
  }

  close() {
    this.generation.close();
    this.admin.close();
  }
}

module.exports = { ApexClient, loadApex, status: grpc.status };
