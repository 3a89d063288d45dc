#!/usr/bin/awk -f
# Horizontal bar chart as a standalone SVG, no dependencies: the ratios of a benchmark table.
#
#   awk -F'\t' -v title="NBD: ours / other" -v marks="1,2" -f bench/lib/bar-chart.awk ratios.tsv >chart.svg
#
# Input: one bar per line, "GROUP<TAB>SERIES<TAB>VALUE" (e.g. "4k random read QD32<TAB>ours/nbdkit<TAB>1.28");
# bars of one group sit together, each series has its colour; VALUE "n/a" or empty draws no bar.
# marks: comma-separated values that get a dashed vertical line (the goals, e.g. 1 = parity).
# cap: optional axis maximum; a longer bar stops at the edge, its label says the real value, so one
# outlier (a p99 ratio of 30) does not flatten the rest.

function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); gsub(/"/, "\\&quot;", s); return s }

{
    if (NF < 3) next
    if (!($1 in gindex)) { gindex[$1] = ++ngroups; gname[ngroups] = $1 }
    if (!($2 in sindex)) { sindex[$2] = ++nseries; sname[nseries] = $2 }
    n++; bg[n] = gindex[$1]; bs[n] = sindex[$2]; bv[n] = $3
    if ($3 ~ /^[0-9.]+$/ && $3 + 0 > max) max = $3 + 0
}

END {
    split(marks, mk, ",")
    for (i in mk) if (mk[i] + 0 > max) max = mk[i] + 0
    if (max <= 0) max = 1
    if (cap > 0 && max > cap) max = cap
    max = max * 1.1
    colours = "#4e79a7,#f28e2b,#59a14f,#e15759,#76b7b2,#edc948"
    split(colours, col, ",")
    left = 230; plot = 520; barh = 14; gap = 10; top = 46
    height = top + ngroups * (nseries * barh + gap) + 30 + nseries * 18
    width = left + plot + 60
    printf "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n", width, height, width, height
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    printf "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", esc(title)
    y = top
    for (g = 1; g <= ngroups; g++) {
        printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left - 8, y + nseries * barh / 2 + 4, esc(gname[g])
        for (s = 1; s <= nseries; s++) {
            for (i = 1; i <= n; i++) if (bg[i] == g && bs[i] == s) {
                if (bv[i] ~ /^[0-9.]+$/) {
                    w = (bv[i] + 0 > max ? max : bv[i]) / max * plot
                    printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"><title>%s %s: %s</title></rect>\n", left, y, w, barh - 2, col[(s - 1) % 6 + 1], esc(gname[g]), esc(sname[s]), bv[i]
                    printf "<text x=\"%.1f\" y=\"%d\" font-size=\"11\">%s</text>\n", left + w + 4, y + barh - 4, bv[i]
                } else {
                    printf "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#888\">n/a</text>\n", left + 4, y + barh - 4
                }
            }
            y += barh
        }
        y += gap
    }
    printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", left, top - 6, left, y
    for (i in mk) {
        x = left + mk[i] / max * plot
        printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#c00\" stroke-dasharray=\"4,3\"/>\n", x, top - 6, x, y
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\" fill=\"#c00\">%s×</text>\n", x, top - 10, mk[i]
    }
    y += 14
    for (s = 1; s <= nseries; s++) {
        printf "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/>\n", left, y, col[(s - 1) % 6 + 1]
        printf "<text x=\"%d\" y=\"%d\">%s</text>\n", left + 18, y + 10, esc(sname[s])
        y += 18
    }
    printf "</svg>\n"
}
