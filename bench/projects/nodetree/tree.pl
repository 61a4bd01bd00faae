# tree.pl DEST FILES MB SEED: a node_modules-like tree, deterministic for the same arguments
# (perl's rand is its own drand48, the same on every platform). Packages of zipf-like sizes, some
# scoped, some nested in another's node_modules; most files small (log-normal, median ~1 KB), one
# in a thousand large (holding what the small ones leave of MB); executable bin/cli.js files with
# .bin/ symlinks to them, and a workspace folder linked into node_modules.
use strict;
use warnings;
use File::Path qw(make_path);

my ($dest, $files, $mb, $seed) = @ARGV;
exit 0 if $files == 0;
srand($seed);
my $total = $mb * 1_000_000;

# Content: a 4 MiB random pool XORed with a key per file and MiB, so no two files (nor two
# MiB of one) share a byte run: incompressible, and nothing to deduplicate.
my $POOL = 1 << 22;
my $pool = pack("L*", map { int(rand(4294967296)) } 1 .. $POOL / 4);
sub content {
    my ($id, $size) = @_;
    my $out = "";
    for (my $at = 0; $at < $size; $at += 1 << 20) {
        my $n = $size - $at < (1 << 20) ? $size - $at : 1 << 20;
        my $key = pack("Q", ($id * 1_000_003 + $at) ^ ($seed << 40));
        my $off = ($id * 7919 + $at) % ($POOL - $n + 1);
        $out .= substr($pool, $off, $n) ^ ($key x (($n >> 3) + 1));
    }
    return substr($out, 0, $size);
}

my @words = qw(core util utils lib dist src esm cjs internal helpers types locale node browser
    compat shared common polyfills fp plugins parsers data es5 es2015 umd min legacy);
my @exts = qw(js js js js cjs mjs d.ts d.ts map json md ts);
sub pick { $_[int(rand(@_))] }
sub gauss { sqrt(-2 * log(1 - rand())) * cos(6.283185307 * rand()) }

# packages: about one per 50 files, 10% scoped, 15% nested in an earlier package
my $npkg = int($files / 50) || 1;
my @pkgs;
for my $p (0 .. $npkg - 1) {
    my $name = (rand() < 0.1 ? "\@" . pick(@words) . "/" : "") . pick(@words) . "-" . $p;
    my $base = ($p > 10 && rand() < 0.15) ? $pkgs[int(rand($p))] . "/node_modules" : "node_modules";
    push @pkgs, "$base/$name";
}

# files: which package (zipf-like), which folder of it (a package grows a new folder, at most 6
# deep, for about one file in eight), what size
my (@paths, @sizes);
my %dirs;
for my $i (0 .. $files - 1) {
    my $pkg = $pkgs[int($npkg * rand() ** 2)];
    my $own = $dirs{$pkg} //= [$pkg];
    my $dir = $own->[int(rand(@$own))];
    if (rand() < 0.125 && ($dir =~ tr{/}{}) < ($pkg =~ tr{/}{}) + 6) {
        $dir = "$dir/" . pick(@words);
        push @$own, $dir;
    }
    push @paths, "$dir/" . pick(@words) . $i . "." . pick(@exts);
    push @sizes, int(exp(7 + 1.3 * gauss()));
}
# bin/cli.js of one package in ten, each with a node_modules/.bin/ link to it
my @bins = map { $pkgs[$_ * 10] } 0 .. int(($npkg - 1) / 10);
my $nbin = @bins;
splice(@paths, 0, $nbin, map { "$_/bin/cli.js" } @bins);

my $large = int($files / 1000) || 1;
my $small = 0;
$small += $sizes[$_] for $large .. $files - 1;
if ($small > $total * 0.7) {  # a tiny MB: shrink the small files to leave the large ones room
    my $f = $total * 0.7 / $small;
    $_ = int($_ * $f) for @sizes[$large .. $files - 1];
    $small = 0;
    $small += $sizes[$_] for $large .. $files - 1;
}
my @w = map { 0.2 + rand() } 1 .. $large;
my $wsum = 0;
$wsum += $_ for @w;
$sizes[$_ + $nbin] = int(($total - $small) * $w[$_] / $wsum) for 0 .. $large - 1;
# the large files are the first after the bins: swap so they land at random places
for my $k (0 .. $large - 1) {
    my $j = $nbin + int(rand($files - $nbin));
    @sizes[$k + $nbin, $j] = @sizes[$j, $k + $nbin];
}

for my $i (0 .. $files - 1) {
    my $path = "$dest/$paths[$i]";
    (my $dir = $path) =~ s{/[^/]*$}{};
    make_path($dir) unless -d $dir;
    open(my $fh, ">:raw", $path) or die "$path: $!";
    print $fh content($i, $sizes[$i]);
    close($fh) or die "$path: $!";
    chmod(0755, $path) if $i < $nbin;
}
make_path("$dest/node_modules/.bin");
for my $b (@bins) {
    (my $rel = $b) =~ s{^node_modules/}{};
    (my $cmd = $rel) =~ s{.*/}{};
    symlink("../$rel/bin/cli.js", "$dest/node_modules/.bin/$cmd") or die "$cmd: $!";
}
# a workspace package, linked into node_modules as yarn and npm workspaces do
make_path("$dest/packages/app/lib");
open(my $fh, ">", "$dest/packages/app/lib/index.js") or die;
print $fh "module.exports = 1;\n";
close($fh);
make_path("$dest/node_modules/\@workspace");
symlink("../../packages/app", "$dest/node_modules/\@workspace/app") or die "app: $!";
