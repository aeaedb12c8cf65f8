"""TF-IDF + logistic regression (scikit-learn) on the movie-review sentiment split that
`lmforge finetune classify` holds out (finetune.split_seed = 0, test_fraction = 0.1): the baseline the
fine-tuned GPTs are compared with in docs/finetune.md.

Run: python bench/sentiment_baseline.py
"""

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from lmforge.data.finetune_data import SENTIMENT_CLASSES, read_rotten_tomatoes, split_examples
from lmforge.evaluation.classification import classification_report, report_table


def main() -> None:
    train, test = split_examples(read_rotten_tomatoes(), test_fraction=0.1, seed=0)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform([e.text for e in train])
    model = LogisticRegression(C=4.0, max_iter=1000).fit(features, [e.label for e in train])
    predictions = model.predict(vectorizer.transform([e.text for e in test]))
    report = classification_report([e.label for e in test], predictions.tolist(), SENTIMENT_CLASSES)
    print(f"TF-IDF (1-2 grams) + logistic regression, {len(train):,} train / {len(test):,} held-out")
    print(report_table(report))


if __name__ == "__main__":
    main()
