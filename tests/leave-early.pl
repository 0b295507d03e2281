#!/usr/bin/perl
# Clients that leave a server before its answer, for the example servers'
# tests (tests/example-sqlite-server.sh, tests/example-long-poll.sh).
#
#   leave-early.pl PORT N HOW REQUEST
#
# Opens N connections to 127.0.0.1:PORT, one after another; on each sends
# REQUEST (its "\r\n" written as those four characters) in one write, then
#   close   closes at once (a FIN); REQUEST may hold two pipelined requests,
#           so that the server writes again after the first answer drew
#           the client's RST
#   abort   half-closes (a FIN), then closes with SO_LINGER 0 (a RST): the
#           server's very first write then fails with EPIPE
#   read    reads the answer to the end and prints it (a probe: the server
#           has served every connection accepted before this one)
# A server that does not ignore SIGPIPE dies at such a write (libuv writes
# with plain write(2)).  Perl, not a C helper: perl-base is Essential in
# Debian, and the clients need socket options that mm_tcp does not offer.
use strict;
use warnings;
use Socket qw(SOL_SOCKET SO_LINGER);
use IO::Socket::INET;

@ARGV == 4 or die "usage: leave-early.pl PORT N close|abort|read REQUEST\n";
my ($port, $n, $how, $request) = @ARGV;
$how =~ /^(close|abort|read)$/ or die "leave-early.pl: HOW is $how\n";
$request =~ s/\\r\\n/\r\n/g;
for (1 .. $n) {
  my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
    or die "leave-early.pl: connect to port $port: $!\n";
  defined syswrite($s, $request) or die "leave-early.pl: write: $!\n";
  if ($how eq 'abort') {
    shutdown($s, 1) or die "leave-early.pl: shutdown: $!\n";
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0))
      or die "leave-early.pl: SO_LINGER: $!\n";
  } elsif ($how eq 'read') {
    my ($answer, $got) = ('', 0);
    while (($got = sysread($s, my $chunk, 4096))) {
      $answer .= $chunk;
    }
    defined $got or die "leave-early.pl: read: $!\n";
    print $answer;
  }
  close($s);
}
