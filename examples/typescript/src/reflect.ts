// Ask a daemon over gRPC server reflection which services it serves and
// which methods buildd.v1.Buildd has, with no .proto of buildd at hand:
// what grpcurl, Postman or an IDE's gRPC console do. Speaks the final
// grpc.reflection.v1 (default) or the older v1alpha, from the reflection.proto
// files that the official @grpc/reflection package ships.
//
//   node dist/reflect.js --address unix:///path/buildd.sock [--api v1|v1alpha]
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as descriptor from 'protobufjs/ext/descriptor';

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] } | null;
  file_descriptor_response?: { file_descriptor_proto: Buffer[] } | null;
  error_response?: { error_code: number; error_message: string } | null;
  message_response?: string;
}

type ReflectionStream = grpc.ClientDuplexStream<Record<string, unknown>, ReflectionResponse>;
type ReflectionClient = grpc.Client & { ServerReflectionInfo(): ReflectionStream };

function ask(stream: ReflectionStream, request: Record<string, unknown>): Promise<ReflectionResponse> {
  return new Promise((resolve, reject) => {
    stream.once('data', resolve);
    stream.once('error', reject);
    stream.write(request);
  });
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const option = (flag: string, fallback: string): string => {
    const index = argv.indexOf(flag);
    return index >= 0 ? argv[index + 1] ?? fallback : fallback;
  };
  const address = option('--address', process.env.BUILDD_ADDRESS ?? '');
  const api = option('--api', 'v1');
  if (!address || (api !== 'v1' && api !== 'v1alpha')) {
    throw new Error('usage: reflect.js --address TARGET [--api v1|v1alpha]');
  }
  const protos = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto');
  const definition = protoLoader.loadSync(`grpc/reflection/${api}/reflection.proto`, {
    keepCase: true,
    defaults: false,
    oneofs: true,
    includeDirs: [protos],
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { reflection: Record<string, { ServerReflection: new (a: string, c: grpc.ChannelCredentials) => ReflectionClient }> };
  };
  const Service = loaded.grpc.reflection[api]!.ServerReflection;
  const client = new Service(address, grpc.credentials.createInsecure());
  const stream = client.ServerReflectionInfo();

  const listed = await ask(stream, { list_services: '' });
  if (listed.error_response) throw new Error(listed.error_response.error_message);
  const services = (listed.list_services_response?.service ?? []).map((s) => s.name).sort();

  const file = await ask(stream, { file_containing_symbol: 'buildd.v1.Buildd' });
  if (file.error_response) throw new Error(file.error_response.error_message);
  const methods: string[] = [];
  for (const bytes of file.file_descriptor_response?.file_descriptor_proto ?? []) {
    const proto = descriptor.FileDescriptorProto.decode(bytes) as unknown as descriptor.IFileDescriptorProto;
    for (const service of proto.service ?? []) {
      if (`${proto.package}.${service.name}` === 'buildd.v1.Buildd') {
        methods.push(...(service.method ?? []).map((m) => m.name ?? ''));
      }
    }
  }
  stream.end();
  client.close();
  process.stdout.write(JSON.stringify({ api, services, buildd_methods: methods.sort() }) + '\n');
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
